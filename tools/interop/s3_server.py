"""A local S3-compatible server (moto) for flame's object-store tests, on loopback only.

Usage: python s3_server.py BUCKET [LOCAL_FILE=KEY ...]
Creates BUCKET, uploads the files, prints "READY <endpoint>" and serves until stdin is closed.
Credentials are moto's fixed test values (AWS_ACCESS_KEY_ID=testing, AWS_SECRET_ACCESS_KEY=testing).
"""

import sys

import boto3
from moto.server import ThreadedMotoServer


def main():
    bucket = sys.argv[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for spec in sys.argv[2:]:
        local, key = spec.split("=", 1)
        s3.upload_file(local, bucket, key)
    print("READY", endpoint, flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
