#!/bin/sh
# Containers have no init system: packages (postgresql...) must not start services
# while they are installed at build time. 101 = "action forbidden by policy".
exit 101
