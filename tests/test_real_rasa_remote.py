"""End to end with real Rasa 3.6.21 and object storage: a replica started with
`rasa run --remote-storage aws --model latest.tar.gz` serves the model the tool put in the
bucket, and after a new publish `RASA_URL` swaps it with
`PUT /model {"model_file": <immutable key>, "remote_storage": "aws"}`.

The bucket is moto in server mode on 127.0.0.1 (tests/s3_server.py). The tool and Rasa share
no folder: Rasa's working folder is its own, and it reads everything from the bucket.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.helpers import wait_for
from tests.real_rasa import RasaServer, free_port, greeting, make_project, train_with_cli
from tests.s3_server import SECRET, MotoServer, client_environment, create_bucket, s3_client


@pytest.fixture
def moto_server():
    server = MotoServer()
    yield server
    server.stop()


def test_a_remote_storage_replica_serves_the_published_model_and_is_swapped_by_key(
        start_tool, tmp_path, moto_server, monkeypatch):
    create_bucket(moto_server.url)
    staging = tmp_path / "staging"
    first = train_with_cli(make_project(tmp_path / "project-a", "a"), staging)
    second = train_with_cli(make_project(tmp_path / "project-b", "b"), staging)

    bucket_env = client_environment(moto_server.url)
    replica = RasaServer(tmp_path / "replica", port=free_port(), model="latest.tar.gz",
                         extra_args=("--remote-storage", "aws"))
    tool = start_tool(RASA_URL=replica.url, RASA_SYNC_INTERVAL="2", RASA_RETRY_FOR="30",
                      **bucket_env)
    tool.ready()
    models = tmp_path / "models"
    shutil.copyfile(first, models / first.name)
    client = s3_client(moto_server.url)

    def key_holds(path) -> bool:
        try:
            body = client.get_object(Bucket="models", Key="latest.tar.gz")["Body"].read()
        except client.exceptions.NoSuchKey:
            return False
        return body == path.read_bytes()

    wait_for(lambda: key_holds(first), 120, message=f"the bucket's key\n{tool.output}")

    # Rasa reads BUCKET_NAME, AWS_ENDPOINT_URL and boto3's variables from its environment.
    for name, value in bucket_env.items():
        monkeypatch.setenv(name, value)
    replica.start()
    try:
        replica.wait_ready()
        wait_for(lambda: replica.reply() == greeting("a"), 120,
                 message=f"the replica serving the first model\n{replica.output[-3000:]}")

        shutil.copyfile(second, models / second.name)
        wait_for(lambda: key_holds(second), 120, message=f"the new model\n{tool.output}")
        version = f"{hashlib.sha256(second.read_bytes()).hexdigest()}.tar.gz"
        wait_for(lambda: (replica.status() or {}).get("model_file") == version, 180,
                 message=f"the replica loading the immutable key\n{tool.output}\n"
                         f"{replica.output[-3000:]}")
        assert replica.reply() == greeting("b")
        tool.wait_for_line("loaded: 204", 30)
        # Rasa leaves each downloaded archive in its working folder (see the README).
        assert (tmp_path / "replica" / version).exists()
    finally:
        replica.stop()
    assert SECRET not in tool.output and SECRET not in replica.output
