"""Kernels as data: schema, kernelspecs, labels, rendered steps and tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubdeploy.contract.labels import IMAGE_KERNELS
from hubdeploy.images import kernelcheck, kernels
from hubdeploy.images.plan import plan_images
from hubdeploy.images.source import build_time_labels
from hubdeploy.site.images import Kernel
from hubdeploy.site.model import Site


def site(alpha_kernels=None, beta_kernels=None, base_kernels=None) -> Site:
    return Site.model_validate({
        "name": "demo",
        "images": {
            "base": {"kernels": base_kernels or []},
            "collaborations": {
                "alpha": {"kernels": alpha_kernels if alpha_kernels is not None else [
                    {"name": "r", "language": "r", "packages": ["r-cran-jsonlite"], "env": {"A": "1"}},
                    {"name": "py1", "packages": ["six==1.16.0"]},
                    {"name": "py2", "packages": ["idna", "packaging"], "display_name": "Py 2"},
                ]},
                "beta": {"parent": "alpha", "kernels": beta_kernels or [{"name": "sh", "language": "bash"}]},
                "gamma": {},
            },
        },
        "profiles": [{"name": "d", "image": "base"}],
    })


def plans(s: Site, tmp_path: Path):
    return plan_images(s, tmp_path)


def test_kernel_defaults_and_closed_model():
    k = Kernel.model_validate({"name": "py"})
    assert (k.language, k.packages, k.env, k.display_name) == ("python", [], {}, None)
    with pytest.raises(ValidationError):
        Kernel.model_validate({"name": "py", "pakages": ["six"]})
    with pytest.raises(ValidationError):
        Kernel.model_validate({"name": "py", "language": "julia"})
    with pytest.raises(ValidationError):
        Kernel.model_validate({"name": "py", "packages": ["six; rm -rf /"]})
    with pytest.raises(ValidationError):
        Kernel.model_validate({"name": "py", "env": {"1BAD": "x"}})


def test_duplicate_kernel_names_and_colliding_spec_names_are_rejected():
    with pytest.raises(ValidationError, match="duplicate kernel name 'py'"):
        site(alpha_kernels=[{"name": "py"}, {"name": "py"}])
    # alpha + "x-y" and alpha-x (a collaboration) + "y" would both install "alpha-x-y".
    with pytest.raises(ValidationError, match="kernelspec name 'alpha-x-y'"):
        Site.model_validate({
            "name": "demo",
            "images": {"collaborations": {"alpha": {"kernels": [{"name": "x-y"}]},
                                          "alpha-x": {"kernels": [{"name": "y"}]}}},
            "profiles": [{"name": "d", "image": "base"}],
        })


def test_kernelspecs_by_language():
    py = kernels.kernelspec("astro", Kernel(name="py311", env={"B": "2", "A": "1"}))
    assert py["argv"][:3] == ["/opt/kernels/astro-py311/bin/python", "-m", "ipykernel_launcher"]
    assert py["display_name"] == "astro-py311" and py["language"] == "python"
    assert list(py["env"]) == ["A", "B"]
    r = kernels.kernelspec("astro", Kernel(name="r", language="r", display_name="R"))
    assert r["argv"][0] == "/usr/bin/R" and "IRkernel::main()" in r["argv"] and r["language"] == "R"
    assert "env" not in r and kernels.venv_path("astro", Kernel(name="r", language="r")) is None
    sh = kernels.kernelspec("astro", Kernel(name="sh", language="bash"))
    assert sh["argv"][1:3] == ["-m", "bash_kernel"] and sh["env"] == {"PS1": "$"}
    assert kernels.requirements(Kernel(name="sh", language="bash", packages=["six"])) == b"bash_kernel\nsix\n"


def test_runner_and_packages_are_separate_requirements():
    """The runtime layer installs the runner only (pinned if the site pins it); the
    packages layer repeats the runner lines so that the resolver keeps the kernel working."""
    plain = Kernel(name="p", packages=["six", "numpy<2"])
    assert kernels.runner_requirements(plain) == b"ipykernel\n"
    assert kernels.requirements(plain) == b"ipykernel\nsix\nnumpy<2\n"
    assert kernels.has_packages(plain)
    pinned = Kernel(name="p", packages=["IPyKernel==6.29.5", "six"])
    assert kernels.runner_requirements(pinned) == b"IPyKernel==6.29.5\n"
    assert kernels.requirements(pinned) == b"IPyKernel==6.29.5\nsix\n"
    only_runner = Kernel(name="p", packages=["ipykernel>=6"])
    assert kernels.runner_requirements(only_runner) == b"ipykernel>=6\n"
    assert not kernels.has_packages(only_runner)
    sh = Kernel(name="sh", language="bash", packages=["bash-kernel==0.10.0", "ipykernel"])
    # bash_kernel and bash-kernel are one project; ipykernel is just a package for bash.
    assert kernels.runner_requirements(sh) == b"bash-kernel==0.10.0\n"
    assert kernels.requirements(sh) == b"bash-kernel==0.10.0\nipykernel\n"
    assert not kernels.has_packages(Kernel(name="r", language="r", packages=["r-cran-jsonlite"]))


def test_dist_names_follow_pep503():
    assert kernels.dist_name("IPyKernel[test]>=6") == "ipykernel"
    assert kernels.dist_name("bash_kernel") == kernels.dist_name("Bash.Kernel") == "bash-kernel"
    assert kernels.dist_name("six==1.16.0") == "six"


def test_r_runtime_and_packages_are_split():
    ks = [Kernel(name="r", language="r", packages=["r-cran-jsonlite", "r-cran-irkernel"]),
          Kernel(name="r2", language="r", packages=["r-cran-jsonlite", "r-cran-xml2"]), Kernel(name="py")]
    assert kernels.r_runtime(ks) == ["r-base-core", "r-cran-irkernel"]
    assert kernels.r_packages(ks) == ["r-cran-jsonlite", "r-cran-xml2"]
    assert kernels.r_runtime([Kernel(name="py")]) == [] and kernels.r_packages([Kernel(name="py")]) == []


def test_r_libraries_from_debian_names():
    assert kernels.r_library("r-cran-jsonlite") == "jsonlite"
    assert kernels.r_library("r-bioc-biobase") == "biobase"
    assert kernels.r_library("libxml2-dev") is None


def test_context_dockerfile_and_cumulative_label(tmp_path):
    p = plans(site(), tmp_path)
    alpha, beta = p["alpha"], p["beta"]
    assert json.loads(alpha.files["kernelspecs/alpha-py2/kernel.json"])["display_name"] == "Py 2"
    assert alpha.files["kernels/alpha-py2/runner.txt"] == b"ipykernel\n"
    assert alpha.files["kernels/alpha-py2/requirements.txt"] == b"ipykernel\nidna\npackaging\n"
    assert not [f for f in alpha.files if f.startswith("kernels/alpha-r/")]
    df = alpha.files["Dockerfile"].decode()
    # Runtimes first (R, then each venv with its runner), then the version check, then the
    # package lists (R's, then each venv's), then every kernelspec in one COPY.
    order = ["--no-install-recommends r-base-core r-cran-irkernel ", "COPY kernels/alpha-py1/runner.txt", "COPY kernels/alpha-py2/runner.txt",
             "jupyterhub-singleuser --version", "--no-install-recommends r-cran-jsonlite ",
             "COPY kernels/alpha-py1/requirements.txt", "COPY kernels/alpha-py2/requirements.txt",
             f"COPY kernelspecs/ {kernels.SPEC_ROOT}/", "LABEL "]
    assert [df.index(s) for s in order] == sorted(df.index(s) for s in order)
    assert f"{kernels.UV} venv --no-cache --seed --python /usr/bin/python3 /opt/kernels/alpha-py1" in df
    assert "--python /opt/kernels/alpha-py2/bin/python" in df
    assert "pip install --no-cache-dir" not in df  # the kernels are uv's; no pip cache either way
    # No package layer for a kernel that has only its runner.
    assert "requirements.txt" not in beta.files["Dockerfile"].decode()
    assert "kernels/beta-sh/runner.txt" in beta.files
    assert "r-base-core" not in beta.files["Dockerfile"].decode()
    own = kernels.from_labels(alpha.labels)
    assert [k["name"] for k in own] == ["alpha-r", "alpha-py1", "alpha-py2"]
    assert own[0]["libraries"] == ["IRkernel", "jsonlite"] and own[1]["prefix"] == "/opt/kernels/alpha-py1"
    assert [k["name"] for k in kernels.from_labels(beta.labels)] == ["alpha-r", "alpha-py1", "alpha-py2", "beta-sh"]
    assert kernels.from_labels(p["gamma"].labels) == [] and IMAGE_KERNELS in p["gamma"].labels
    assert IMAGE_KERNELS not in p["hub"].labels


def test_images_without_kernels_render_as_before(tmp_path):
    df = plans(site(), tmp_path)["gamma"].files["Dockerfile"].decode()
    assert "kernels" not in df.split("# Labels last")[0] and "\n\n" not in df


def test_changing_one_kernel_retags_only_that_image_and_its_children(tmp_path):
    a = plans(site(), tmp_path)
    b = plans(site(beta_kernels=[{"name": "sh", "language": "bash", "packages": ["six"]}]), tmp_path)
    assert [n for n in a if a[n].ref != b[n].ref] == ["beta"]
    c = plans(site(alpha_kernels=[{"name": "py1", "packages": ["six==1.17.0"]}]), tmp_path)
    assert sorted(n for n in a if a[n].ref != c[n].ref) == ["alpha", "beta"]
    # Same site, same bytes.
    again = plans(site(), tmp_path)
    assert all(again[n].files == a[n].files and again[n].ref == a[n].ref for n in a)


def test_build_time_labels_stay_out_of_the_hash(tmp_path):
    p = plans(site(), tmp_path)
    extra = build_time_labels()
    assert "org.opencontainers.image.created" in extra
    for plan in p.values():
        for key in extra:
            assert key not in plan.labels
            assert key.encode() not in plan.files.get("Dockerfile", b"")


def test_check_code_per_language():
    py = kernelcheck.check_code("python", {"language": "python", "env": {"A": "1"}, "packages": ["six>=1"],
                                          "prefix": "/opt/kernels/x"})
    compile(py, "<check>", "exec")
    r = kernelcheck.check_code("R", {"language": "r", "env": {"A": "it's"}, "packages": [],
                                    "libraries": ["IRkernel"]})
    assert 'library(m[1], character.only = TRUE)' in r and '"A" = "it\'s"' in r
    sh = kernelcheck.check_code("bash", {"language": "bash", "env": {"B": "x y"}, "packages": ["six"],
                                        "prefix": "/opt/kernels/s"})
    assert "[ \"${B}\" = 'x y' ]" in sh and kernelcheck.MARK_OK in sh
    assert kernelcheck.MARK_OK in kernelcheck.check_code("python", None)
