"""Unit tests: a package, so a module may share its basename with an integration test
(test_identity_ldap: the unit and the slapd-backed tests of the same source)."""
