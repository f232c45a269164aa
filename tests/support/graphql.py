"""The GraphQL documents tests send, declared once.

A test that needs a field these lack selects it in a document of its own, next to the test;
what several modules send lives here, so a schema change is made in one place.
"""

from __future__ import annotations

from typing import Any

# What a mutation that may be refused asks for besides its payload (`<payload> | FieldError`).
REFUSAL = "__typename ... on FieldError { field message }"


def accepted(answer: dict[str, Any]) -> dict[str, Any]:
    """A `<payload> | FieldError` answer that is the payload (asked with REFUSAL)."""
    assert answer["__typename"] != "FieldError", answer
    return answer


# Accounts

SIGN_UP = f"""mutation($e: String!, $p: String!, $r: [String!]!) {{
  signUp(email: $e, password: $p, roles: $r) {{
    ... on Session {{ token user {{ id clientId }} }} {REFUSAL} }} }}"""
SIGN_IN = f"""mutation($e: String!, $p: String!) {{
  signIn(email: $e, password: $p) {{
    ... on Session {{ token user {{ id clientId }} }} {REFUSAL} }} }}"""
CREATE_KEY = """mutation($n: String!, $s: [String!]!) {
  createApiKey(name: $n, scopes: $s) {
    ... on ApiKeyCreated { id key scopes } __typename ... on FieldError { field message } } }"""

# Jobs

SUBMIT = """mutation($s: JSON!) { submitJob(spec: $s) { __typename
  ... on JobSubmitted { job { id state } } ... on SpecRejected { errors { field message } } } }"""
CANCEL = f"mutation($id: ID!) {{ cancelJob(id: $id) {{ ... on Job {{ id state }} {REFUSAL} }} }}"
# A job as its client sees it: its ending, what it cost, where it ran, its outputs and events.
JOB = """query($id: ID!) { job(id: $id) { id state reason costMicro providerId
  outputs { path key digest size } events { type data } } }"""
JOB_EVENTS = """subscription($id: ID!, $after: Int!) {
  jobEvents(jobId: $id, after: $after) { seq type } }"""

# Providers

REGISTER_PROVIDER = f"""mutation($input: RegisterProviderInput!) {{
  registerProvider(input: $input) {{ ... on Provider {{ providerId status }} {REFUSAL} }} }}"""
PROVIDERS = "{ providers { providerId reputation earningsMicro } }"
HEARTBEAT = f"""mutation($id: String!, $t: JSON) {{
  providerHeartbeat(providerId: $id, telemetry: $t) {{
    ... on HeartbeatReceived {{ providerId }} {REFUSAL} }} }}"""
DRAIN = f"""mutation($id: String!) {{
  drainProvider(providerId: $id) {{ ... on ProviderDrained {{ providerId }} {REFUSAL} }} }}"""
# A provider as its owner sees it, and the owner's controls (each answers with it).
PROVIDER_FIELDS = """providerId status statusReason lastHeartbeatAt pricePerGpuHourMicro
  pricePerGpuHour reputation earningsMicro gpus { index status reason busyJobId }"""
PROVIDER = f"query($id: String!) {{ provider(providerId: $id) {{ {PROVIDER_FIELDS} }} }}"
SUSPEND = f"""mutation($id: String!, $i: Int!) {{
  suspendGpu(providerId: $id, index: $i) {{
    ... on Provider {{ {PROVIDER_FIELDS} }} {REFUSAL} }} }}"""
RESUME = f"""mutation($id: String!, $i: Int!) {{
  resumeGpu(providerId: $id, index: $i) {{
    ... on Provider {{ {PROVIDER_FIELDS} }} {REFUSAL} }} }}"""
SET_PRICE = f"""mutation($id: String!, $p: String!) {{
  setPrice(providerId: $id, pricePerGpuHour: $p) {{
    ... on Provider {{ {PROVIDER_FIELDS} }} {REFUSAL} }} }}"""
