"""Deployment targets and the Docker images: validated and parsed here (no Docker engine runs on CI)."""

import os
import shlex
import subprocess

import dockerfile
import pytest
from conftest import REPO

from edgekit.errors import EdgekitError
from edgekit.targets import available_targets, load_target


def test_every_target_loads_and_xavier_says_what_it_is():
    assert available_targets() == ["cpu", "orin", "x86-gpu", "xavier"]
    xavier = load_target("xavier")
    assert (xavier.arch, xavier.l4t, xavier.tensorrt, xavier.python, xavier.cuda_arch) == \
        ("aarch64", "R35.4.1", "8.5.2", "3.8", "sm_72")
    assert xavier.dla_cores == 2 and xavier.nvpmodel == 0 and xavier.placements == ["gpu", "dla0", "dla1"]
    assert xavier.power_rails == ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"]
    assert load_target("orin").tensorrt.startswith("10.")
    assert load_target("cpu").launch == "native"


def test_bad_targets(tmp_path):
    with pytest.raises(EdgekitError, match=r"unknown target 'tx2'; available: cpu, orin, x86-gpu, xavier"):
        load_target("tx2")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\nplacement: [gpu]\n")
    with pytest.raises(EdgekitError, match=r"target wrong\.yaml: unknown key 'placement'; valid keys: arch"):
        load_target(str(wrong))
    dla = tmp_path / "dla.yaml"
    dla.write_text("name: nano\nplacements: [gpu, dla0]\n")
    with pytest.raises(EdgekitError, match="DLA cores the target does not have"):
        load_target(str(dla))
    docker = tmp_path / "docker.yaml"
    docker.write_text("name: d\nlaunch: docker\n")
    with pytest.raises(EdgekitError, match="launch docker needs an image"):
        load_target(str(docker))


def test_a_target_file_that_says_runtime_for_how_it_launches_still_reads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("name: old\nruntime: docker\nimage: edgekit/cpu\n")
    assert load_target(str(old)).launch == "docker"
    both = tmp_path / "both.yaml"
    both.write_text("name: both\nruntime: docker\nlaunch: native\n")
    with pytest.raises(EdgekitError, match=r"both\.yaml: runtime: is the old name of launch:; keep only launch:"):
        load_target(str(both))


@pytest.mark.parametrize("image", ["jetson", "host", "cpu"])
def test_dockerfiles_parse_and_copy_only_what_exists(image):
    path = os.path.join(REPO, "docker", image, "Dockerfile")
    commands = dockerfile.parse_file(path)  # Docker's own (Go) parser
    kinds = [c.cmd for c in commands]
    assert "FROM" in kinds and "ENTRYPOINT" in kinds and "LABEL" in kinds
    assert "ADD" not in kinds  # nothing fetched at build time behind the reader's back
    stages = {c.value[2] for c in commands if c.cmd == "FROM" and len(c.value) == 3}
    for command in commands:
        if command.cmd != "COPY":
            continue
        if any(flag.startswith("--from=") for flag in command.flags):
            assert command.flags[0].split("=", 1)[1] in stages
            continue
        for source in command.value[:-1]:
            assert os.path.exists(os.path.join(REPO, source)), "{}: COPY {} does not exist".format(image, source)
    # every base image is a build argument, so the L4T/TensorRT tag can be matched to the device
    assert all(c.value[0].startswith("${") for c in commands if c.cmd == "FROM")


def test_jetson_image_is_multistage_on_l4t_r35_tensorrt():
    commands = dockerfile.parse_file(os.path.join(REPO, "docker", "jetson", "Dockerfile"))
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    assert args["L4T_TRT_RUNTIME"] == "nvcr.io/nvidia/l4t-tensorrt:r8.5.2-runtime"
    assert args["L4T_TRT_DEVEL"].startswith("nvcr.io/nvidia/l4t-tensorrt:r8.5.2")
    assert sum(c.cmd == "FROM" for c in commands) == 2
    assert any("pycuda" in " ".join(c.value) for c in commands if c.cmd == "RUN")


@pytest.mark.parametrize("jetson", ["xavier", "orin"])
def test_make_docker_jetson_tags_the_image_its_target_runs(jetson):
    # `make -n` prints the docker build line without running it; the tag must be the target's image,
    # or `edgekit deploy` would report the image missing on a device where it was just built.
    line = subprocess.run(["make", "-s", "-n", "docker-jetson", "JETSON=" + jetson], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:2] == ["docker", "build"]
    assert argv[argv.index("-t") + 1] == load_target(jetson).image
    build_args = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")
    target = load_target(jetson)
    if jetson == "orin":  # JetPack 6: the L4T labels and base follow the target's release
        assert build_args["L4T"].upper() == target.l4t and build_args["PYTHON"] == target.python
        assert build_args["L4T_TRT_RUNTIME"].endswith(":" + build_args["L4T"])
    else:  # the Dockerfile's defaults are JetPack 5.1.2, the Xavier's
        commands = dockerfile.parse_file(os.path.join(REPO, "docker", "jetson", "Dockerfile"))
        defaults = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
        assert build_args == {} and defaults["L4T"].upper() == target.l4t and defaults["PYTHON"] == target.python
    proc = subprocess.run(["make", "docker-jetson", "JETSON=nano"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "JETSON must be xavier or orin, got 'nano'" in proc.stderr


@pytest.mark.parametrize("image", ["jetson", "host", "cpu"])
def test_dockerfile_usage_lines_are_real_edgekit_commands(image, tmp_path):
    """Each image's `docker run ... <image> <args>` usage line parses as an edgekit command, and a preset it names
    is found the way the installed package finds it: from a folder that is not a checkout."""
    from edgekit.cli import build_parser
    from edgekit.recipe import load_recipe

    # comment lines, with shell continuations ("\\" at the end) joined
    text = "".join(line.lstrip("#").strip() + ("\n" if not line.rstrip().endswith("\\") else "")
                   for line in open(os.path.join(REPO, "docker", image, "Dockerfile")) if line.startswith("#"))
    usage = [line.replace("\\", " ") for line in text.splitlines() if line.startswith("docker run")]
    assert usage, "{} has no docker run usage line".format(image)
    for text in usage:
        argv = shlex.split(text)
        tag = next(i for i, a in enumerate(argv) if a.startswith("edgekit/"))
        args = build_parser().parse_args(argv[tag + 1:])
        assert args.func is not None
        if getattr(args, "recipe", None):
            cwd = os.getcwd()
            os.chdir(str(tmp_path))
            try:
                assert load_recipe(args.recipe, args.set).name == args.recipe
            finally:
                os.chdir(cwd)
