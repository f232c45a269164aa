"""The network's maxima: every number that enters it is bounded by one of these.

They are part of the protocol: a job spec (protocol/spec.py) is refused past them on the
client's machine and again by the API, and the domain checks its commands against the
same numbers (domain/limits.py, `Bound`, `OutOfBounds`). Every bound keeps the sums the
network makes of it (a cost, a balance, GPU-milliseconds over a week) far inside a
signed 64-bit integer (SQLite's INTEGER, PostgreSQL's BIGINT: 9.2e18).
"""

MAX_PRICE_MICRO = 10**12
MAX_AMOUNT_MICRO = 10**17
MAX_BALANCE_MICRO = 4 * 10**18
MAX_JOB_GPUS = 64
MAX_PROVIDER_GPUS = 256
MAX_GPU_INDEX = 1023
MAX_GPU_MEMORY_MB = 4 * 1024 * 1024
MAX_GPU_MEMORY_GB = MAX_GPU_MEMORY_MB // 1024
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_REPLICAS = 5
MAX_PRIORITY_LEVELS = 10
MAX_GPUS_PER_CLIENT = 1_000_000
MAX_BYTES = 2**50
MAX_STEP_FILES = 4096
MAX_GPU_MS = MAX_JOB_GPUS * MAX_TIMEOUT_S * 1000
MAX_ERROR_COUNT = 10**12
# A client's verified spend as a reputation outcome carries it (domain/reputation.py): a
# sum over all time, kept below 2^53 so that JSON readers that hold numbers as doubles
# (the web UI) read it exactly; the control plane stamps at most this.
MAX_SPENT_MICRO = 2**53
# How many `outvoted` outcomes a client's jobs had caused before one, as the outcome carries
# it: at this many the spend the next needs (10 credits each, domain/reputation.py) is past
# any spend an outcome carries (2^53), so the control plane's clamp to it changes no count.
MAX_OUTVOTES = 10**9

# A job spec's sizes (protocol/spec.py, protocol/fields.py).
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_ENV_BYTES = 256 * 1024  # all of them, as execve counts: NAME=value and a NUL each
MAX_FILES = 256  # inputs, and outputs
# A storage key (protocol/fields.py check_storage_key): S3 names an object by at most 1024
# bytes of UTF-8 and the S3 backend names it `<client id>/<key>` (a client id has at most 64
# characters); a file system names a file, each segment of a key, by at most 255 bytes.
MAX_CLIENT_ID_CHARS = 64
MAX_KEY_BYTES = 1024 - MAX_CLIENT_ID_CHARS - 1  # 959
MAX_SEGMENT_BYTES = 255
# A run's output is stored under `jobs/<job id, a UUID>/runs/<attempt>/<path>`
# (domain/outputs.py): room for an attempt of 10 digits, any a 32-bit counter holds.
OUTPUT_KEY_PREFIX_BYTES = len("jobs/") + 36 + len("/runs/") + 10 + len("/")
# A path in a spec (`outputs.N`, `inputs.N.name`), in UTF-8: an output's key fits the key's
# bound, and a provider's file system takes the file (PATH_MAX 4096 with its folder).
MAX_PATH_BYTES = MAX_KEY_BYTES - OUTPUT_KEY_PREFIX_BYTES  # 901
MAX_LABEL_CHARS = 128  # resources.gpu_model, resources.region
