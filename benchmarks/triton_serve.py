"""Serve an `edgekit handoff triton` repository with a real Triton server and classify the eval set through
tritonclient; the top-1 must be the model's own (onnxruntime on the same images).

    .venv/bin/python benchmarks/triton_serve.py REPO/MODEL eval.npz --tritonserver PATH [--site PACKAGES]

The server comes from wherever it is installed; on PyPI only nvidia-pytriton 0.7.0 ships one
(pytriton/tritonserver/bin/tritonserver, Triton 2.51), and with the python backend alone: no
onnxruntime or TensorRT backend. So the repository is first served as generated (a server that has the
backend serves it; this one says which backend it lacks), then the same config.pbtxt with its platform
line swapped for `backend: "python"` and a model.py that runs model.onnx on onnxruntime: the inputs,
outputs, dims, max_batch_size, dynamic batching and instance groups stay the generated ones. `--site`:
site-packages holding numpy and onnxruntime for the python backend's stub (its own interpreter).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

PYTHON_MODEL = '''import os
import sys
sys.path.insert(0, {site!r})
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
        self.input, self.output = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            y = self.session.run(None, {{self.input: x}})[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, y)]))
        return responses
'''


def start(server: str, repo: str, log: str, http: int, grpc: int, metrics: int) -> subprocess.Popen:
    backends = os.path.join(os.path.dirname(os.path.dirname(server)), "backends")
    with open(log, "w") as out:
        return subprocess.Popen([server, "--model-repository", repo, "--backend-directory", backends,
                                 "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                                stdout=out, stderr=subprocess.STDOUT)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(client, name: str, proc: subprocess.Popen, seconds: float = 60.0) -> bool:
    """Ready as served by `proc` itself: a server that died (a port taken) is never ready."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            if client.is_model_ready(name):
                return True
        except Exception:  # noqa: BLE001 - the server is still starting
            pass
        time.sleep(0.5)
    return False


def ports() -> list:
    return [free_port() for _ in range(3)]


def classify(client, config, images: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpc

    name, tensor = config.input[0].name, config.output[0].name
    step = max(1, config.max_batch_size) if config.max_batch_size else images.shape[0]
    predicted = []
    for i in range(0, images.shape[0], step):
        chunk = images[i:i + step].astype(np.float32)
        feed = grpc.InferInput(name, list(chunk.shape), "FP32")
        feed.set_data_from_numpy(chunk)
        predicted.append(client.infer(config.name, [feed]).as_numpy(tensor).argmax(1))
    return np.concatenate(predicted)


def serve(server: str, repo: str, config, images: np.ndarray) -> tuple:
    import tritonclient.grpc as grpc

    log = os.path.join(repo, "tritonserver.log")
    http, grpc_port, metrics = ports()
    proc = start(server, repo, log, http, grpc_port, metrics)
    client = grpc.InferenceServerClient("localhost:{}".format(grpc_port))
    try:
        if not wait_ready(client, config.name, proc):
            with open(log) as f:
                why = [line.strip() for line in f if "failed to load" in line or "UNAVAILABLE" in line]
            return None, (why[0] if why else "not ready; see " + log)
        return classify(client, config, images), "served"
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="<repository>/<model> as edgekit handoff triton wrote it")
    parser.add_argument("eval", help="eval.npz")
    parser.add_argument("--tritonserver", required=True, help="the tritonserver binary")
    parser.add_argument("--site", default=os.path.dirname(os.path.dirname(np.__file__)))
    args = parser.parse_args()
    with open(os.path.join(args.model_dir, "config.pbtxt")) as f:
        text = f.read()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    data = np.load(args.eval)
    images, labels = data["images"], data["labels"]
    import onnxruntime as ort

    session = ort.InferenceSession(os.path.join(args.model_dir, "1", "model.onnx"), providers=["CPUExecutionProvider"])
    own = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0].argmax(1)
    print("onnxruntime top-1 {:.2f}% on {} images".format(100.0 * (own == labels).mean(), len(labels)))
    with tempfile.TemporaryDirectory() as work:
        repo = os.path.join(work, "as-generated")
        shutil.copytree(args.model_dir, os.path.join(repo, config.name))
        predicted, said = serve(args.tritonserver, repo, config, images)
        print("as generated ({}): {}".format(config.platform, said))
        repo = os.path.join(work, "python-backend")
        shutil.copytree(args.model_dir, os.path.join(repo, config.name))
        with open(os.path.join(repo, config.name, "config.pbtxt"), "w") as f:
            f.write(text.replace('platform: "{}"'.format(config.platform), 'backend: "python"'))
        with open(os.path.join(repo, config.name, "1", "model.py"), "w") as f:
            f.write(PYTHON_MODEL.format(site=args.site))
        predicted, said = serve(args.tritonserver, repo, config, images)
        if predicted is None:
            print("python backend: " + said)
            return 1
        print("python backend, the generated config otherwise: Triton top-1 {:.2f}%, the same class as onnxruntime on "
              "{} of {} images".format(100.0 * (predicted == labels).mean(), int((predicted == own).sum()), len(own)))
    return 0 if np.array_equal(predicted, own) else 1


if __name__ == "__main__":
    sys.exit(main())
