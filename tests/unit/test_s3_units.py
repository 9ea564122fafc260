"""The pure parts of S3 support: URIs, error translation, and the S3 settings and shorthands."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from recursive_training.config import TrainingConfig
from recursive_training.exceptions import ConfigError, DataError, OutputError
from recursive_training.run_training import create_config_from_args, parse_args
from recursive_training.s3 import describe_error, translated
from recursive_training.s3_location import S3Location, S3Settings, is_s3_uri

WHERE = S3Location("prices", "daily/2020.parquet")
SETTINGS = S3Settings(endpoint_url="http://minio:9000", max_attempts=3)


def client_error(code: str, message: str = "") -> ClientError:
    """A botocore ClientError as the S3 API returns it."""
    return ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://prices/daily/2020.parquet", "prices", "daily/2020.parquet"),
        ("s3://prices/daily/", "prices", "daily/"),
        ("s3://prices", "prices", ""),
        ("s3://my.bucket-01/", "my.bucket-01", ""),
    ],
)
def test_parse_splits_bucket_and_key(uri: str, bucket: str, key: str) -> None:
    assert S3Location.parse(uri) == S3Location(bucket, key)
    assert is_s3_uri(uri)


@pytest.mark.parametrize("uri", ["s3://", "s3://ab/x", "s3://Prices/x", "s3://a_b/x",
                                 "s3://a..b/x", "prices/x", "S3://prices/x"])
def test_parse_rejects_what_is_not_an_s3_uri(uri: str) -> None:
    with pytest.raises(ValueError, match=r"bucket|not an S3 URI"):
        S3Location.parse(uri)


def test_child_and_str() -> None:
    assert str(S3Location("b01", "runs/1/").child("results.json")) == "s3://b01/runs/1/results.json"
    assert str(S3Location("b01", "").child("results.json")) == "s3://b01/results.json"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("NoSuchBucket"),
         "cannot read s3://prices/daily/2020.parquet: bucket 'prices' does not exist at "
         "http://minio:9000; check the bucket name"),
        (client_error("NoSuchKey"), "no such object; check the key"),
        (client_error("404"), "no such object; check the key"),
        (client_error("AccessDenied"), "access denied; the credentials from the AWS chain"),
        (client_error("InvalidAccessKeyId"), "the access key id is not known to the server"),
        (client_error("SignatureDoesNotMatch"), "secret access key does not match"),
        (client_error("ExpiredToken"), "the session token has expired"),
        (client_error("PreconditionFailed"), "the object changed while this run was reading it"),
        (client_error("SlowDown", "Reduce your rate"), "SlowDown: Reduce your rate"),
        (EndpointConnectionError(endpoint_url="http://minio:9000"),
         "S3 endpoint http://minio:9000 is unreachable or dropped the connection, 3 attempts made"),
        (ConnectTimeoutError(endpoint_url="http://minio:9000"),
         "did not accept a connection within --s3-connect-timeout 5s in 3 attempts "
         "(--s3-max-attempts)"),
        (ReadTimeoutError(endpoint_url="http://minio:9000"),
         "did not answer within --s3-read-timeout 8s in 3 attempts (--s3-max-attempts)"),
        (NoCredentialsError(), "no AWS credentials found; set AWS_ACCESS_KEY_ID"),
    ],
)
def test_describe_error_names_location_and_fix(error: Exception, expected: str) -> None:
    message = describe_error(error, WHERE, "read", SETTINGS)
    assert message.startswith("cannot read s3://prices/daily/2020.parquet: ")
    assert expected in message


def test_endpoint_in_messages_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    assert S3Settings().describe_endpoint() == "http://from-env:9000"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert S3Settings().describe_endpoint() == "AWS S3"


@pytest.mark.parametrize("kind", [DataError, OutputError])
def test_translated_raises_the_callers_error_chained(kind: type[DataError | OutputError]) -> None:
    original = client_error("NoSuchKey")
    with pytest.raises(kind, match="no such object") as caught, \
            translated(kind, WHERE, "read", SETTINGS):
        raise original
    assert caught.value.__cause__ is original


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (EndpointConnectionError(endpoint_url="http://minio:9000"), True),
        (ReadTimeoutError(endpoint_url="http://minio:9000"), True),
        (client_error("SlowDown"), True),
        (ClientError({"Error": {"Code": "InternalError"},
                      "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetObject"), True),
        (client_error("NoSuchKey"), False),
        (client_error("AccessDenied"), False),
        (NoCredentialsError(), False),
    ],
)  # fmt: skip
def test_translated_errors_say_whether_a_retry_may_help(error: Exception, retryable: bool) -> None:
    """The connection, a 5xx or throttling may pass; a missing key or a refusal will not."""
    with pytest.raises(DataError) as caught, translated(DataError, WHERE, "read", SETTINGS):
        raise error
    assert caught.value.retryable is retryable


def build(**fields: Any) -> TrainingConfig:
    """A config from these fields."""
    return TrainingConfig.build(**fields)


def test_shorthands_expand_to_locations() -> None:
    config = build(s3_data_bucket="prices", s3_data_prefix="/daily/", s3_results_bucket="results",
                   s3_output_file="s3://index/run.json")
    assert config.input_data == "s3://prices/daily/"
    assert config.output_dir == "s3://results/training_results"
    assert config.results_path == "s3://index/run.json"
    assert build(s3_results_bucket="results", s3_results_prefix="runs/42").output_dir == \
        "s3://results/runs/42"
    assert build(s3_data_bucket="prices").input_data == "s3://prices/"


def test_expanded_config_round_trips() -> None:
    config = build(s3_data_bucket="prices", s3_data_prefix="daily/", s3_results_bucket="results")
    assert build(**config.model_dump()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"s3_data_bucket": "prices", "input_data": "x.csv"},
         "s3_data_bucket (--s3-data-bucket) sets input_data to s3://prices/ but input_data "
         "(--input-data) is x.csv"),
        ({"s3_results_bucket": "results", "output_dir": "out"},
         "s3_results_bucket (--s3-results-bucket) sets output_dir"),
        ({"s3_output_file": "s3://index/r.json", "output_file": "r.json"},
         "s3_output_file (--s3-output-file) sets output_file"),
        ({"s3_output_file": "r.json"}, "must be an s3://bucket/key URI"),
        ({"s3_data_prefix": "daily/"}, "needs s3_data_bucket (--s3-data-bucket)"),
        ({"s3_results_prefix": "runs"}, "needs s3_results_bucket (--s3-results-bucket)"),
        ({"output_dir": "s3://UPPER/x"}, "output_dir (--output-dir): 's3://UPPER/x' does not"),
        ({"report_dir": "s3://reports/x"}, "report_dir (--report) must be a local folder"),
        ({"s3_endpoint_url": "minio:9000"}, "must start with http:// or https://"),
        ({"s3_max_attempts": 0}, "s3_max_attempts (--s3-max-attempts)"),
    ],
)
def test_bad_s3_settings_name_the_flags(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        build(**fields)
    assert message in str(caught.value)


def test_flags_reach_the_settings_the_workers_use() -> None:
    config = create_config_from_args(parse_args([
        "--s3-data-bucket", "prices", "--s3-data-prefix", "daily.parquet",
        "--s3-results-bucket", "results", "--s3-endpoint-url", "http://minio:9000",
        "--s3-region", "eu-west-1", "--s3-max-attempts", "2", "--s3-connect-timeout", "1.5",
        "--s3-read-timeout", "9",
    ]))
    assert config.input_data == "s3://prices/daily.parquet"
    expected = S3Settings("http://minio:9000", "eu-west-1", 2, 1.5, 9.0)
    assert config.s3_settings == expected
    assert hash(config.s3_settings) == hash(expected)  # open_source caches on it
    assert config.output_s3_settings == expected  # the outputs default to the data's store


def test_output_flags_override_the_data_store_one_by_one() -> None:
    """Each --s3-output-* setting replaces the data's; the rest, timeouts included, are kept;
    credentials are named by one source, a profile or a prefix, not both."""
    base = ["--s3-endpoint-url", "http://data:9000", "--s3-region", "eu-west-1",
            "--s3-profile", "reader", "--s3-read-timeout", "9"]  # fmt: skip
    config = create_config_from_args(parse_args([
        *base, "--s3-output-endpoint-url", "https://results.example",
        "--s3-output-credentials-env", "OUT_",
    ]))  # fmt: skip
    assert config.output_s3_settings == S3Settings(
        "https://results.example", "eu-west-1", read_timeout=9.0, credentials_env="OUT_"
    )
    assert config.s3_settings == S3Settings(
        "http://data:9000", "eu-west-1", read_timeout=9.0, profile="reader"
    )
    with pytest.raises(ConfigError, match=r"s3_output_profile .* and s3_output_credentials_env"):
        create_config_from_args(parse_args(
            [*base, "--s3-output-profile", "w", "--s3-output-credentials-env", "OUT_"]
        ))  # fmt: skip
