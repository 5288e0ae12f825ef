"""The chaos suite's servers: the Kafka broker (and SeaweedFS) the other suites start."""

from tests.kafka.conftest import broker, topic  # noqa: F401  (fixtures)
from tests.s3.conftest import s3  # noqa: F401  (fixture)
