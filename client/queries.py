"""The GraphQL documents both clients send; one place to keep them in step with the API.

A mutation the API may refuse for a reason the caller can mend answers `<payload> |
FieldError`; its document asks for `__typename` and the FieldError (client/_http.result)."""

REFUSAL = "__typename ... on FieldError { field message }"

JOB_FIELDS = """
fragment JobFields on Job {
  id clientId name state reason providerId queuePosition queue priority expectedStart
  maxCostMicro costMicro submittedAt updatedAt
  outputs { path key digest size }
}
"""

JOB = (
    """
query Job($id: ID!) {
  job(id: $id) { ...JobFields waitingFor events { seq jobId type at data } }
}
"""
    + JOB_FIELDS
)

JOBS = (
    """
query Jobs($limit: Int!) {
  jobs(limit: $limit) { ...JobFields }
}
"""
    + JOB_FIELDS
)

CANCEL_JOB = (
    """
mutation CancelJob($id: ID!) {
  cancelJob(id: $id) { ...JobFields """ + REFUSAL + """ }
}
"""
    + JOB_FIELDS
)

EXPLAIN = """
query Explain($spec: JSON!) {
  explain(spec: $spec) {
    __typename
    ... on Explanation {
      eligible { providerId gpuIndexes pricePerGpuHourMicro quoteMicro reputation expectedStart }
      rejected { providerId reason }
      gpus { providerId index model memoryMb eligible reason pricePerGpuHourMicro score }
    }
    ... on SpecRejected { errors { field message } }
  }
}
"""

ACCOUNT = """
query Account {
  account { clientId balanceMicro escrowMicro }
}
"""

PROVIDER_FIELDS = """
fragment ProviderFields on Provider {
  providerId region status statusReason lastHeartbeatAt reputation earningsMicro
  pricePerGpuHourMicro
  gpus { index model memoryMb busyJobId status reason }
}
"""

PROVIDERS = (
    """
query Providers {
  providers { ...ProviderFields }
}
"""
    + PROVIDER_FIELDS
)

PROVIDER = (
    """
query Provider($id: String!, $samples: Int!) {
  provider(providerId: $id) {
    ...ProviderFields
    telemetry(limit: $samples) {
      at gpus { index utilizationPct memoryUsedMb temperatureC powerW eccErrors xidErrors }
    }
  }
}
"""
    + PROVIDER_FIELDS
)

PROVIDER_EARNINGS = """
query ProviderEarnings($id: String!, $limit: Int!) {
  providerEarnings(providerId: $id, limit: $limit) {
    providerId balanceMicro earnedMicro verifiedMicro withdrawnMicro
    entries { seq transferId amountMicro balanceMicro counterparty kind memo at }
  }
}
"""

SUSPEND_GPU = (
    """
mutation SuspendGpu($id: String!, $index: Int!) {
  suspendGpu(providerId: $id, index: $index) { ...ProviderFields """ + REFUSAL + """ }
}
"""
    + PROVIDER_FIELDS
)

RESUME_GPU = (
    """
mutation ResumeGpu($id: String!, $index: Int!) {
  resumeGpu(providerId: $id, index: $index) { ...ProviderFields """ + REFUSAL + """ }
}
"""
    + PROVIDER_FIELDS
)

SET_PRICE = (
    """
mutation SetPrice($id: String!, $price: String!) {
  setPrice(providerId: $id, pricePerGpuHour: $price) { ...ProviderFields """ + REFUSAL + """ }
}
"""
    + PROVIDER_FIELDS
)

NODES = """
query Nodes {
  nodes {
    nodeId region operator providerIds
    queues { name gpuModels waiting priorityLevels maxGpusPerClient fairShare }
  }
}
"""

CONFIGURE_QUEUE = """
mutation ConfigureQueue($node: String!, $name: String!, $models: [String!]!, $levels: Int!,
                        $cap: Int!, $fair: Boolean!) {
  configureQueue(nodeId: $node, name: $name, gpuModels: $models, priorityLevels: $levels,
                 maxGpusPerClient: $cap, fairShare: $fair) {
    ... on Node { nodeId } """ + REFUSAL + """
  }
}
"""

QUEUE = """
query Queue($name: String!, $limit: Int!) {
  queue(name: $name, limit: $limit) {
    position jobId name gpus gpuModel priority waitingSince expectedStart mine waitingFor
  }
}
"""

SUBMIT_JOB = (
    """
mutation SubmitJob($spec: JSON!) {
  submitJob(spec: $spec) {
    __typename
    ... on JobSubmitted { job { ...JobFields } warnings }
    ... on SpecRejected { errors { field message } }
  }
}
"""
    + JOB_FIELDS
)

JOB_EVENTS = """
subscription JobEvents($jobId: ID!, $after: Int!) {
  jobEvents(jobId: $jobId, after: $after) { seq jobId type at data }
}
"""

JOB_LOG = """
subscription JobLog($jobId: ID!, $after: Int!) {
  jobLog(jobId: $jobId, after: $after) { seq attempt providerId at text skippedBytes }
}
"""

# Accounts: sign up or in for a session token; API keys for programs and provider agents.

USER_FIELDS = "id email roles clientId providerIds nodeIds"

ME = f"query Me {{ me {{ {USER_FIELDS} }} }}"

SIGN_UP = f"""
mutation SignUp($email: String!, $password: String!, $roles: [String!]!) {{
  signUp(email: $email, password: $password, roles: $roles) {{
    ... on Session {{ token user {{ {USER_FIELDS} }} }} {REFUSAL}
  }}
}}
"""

SIGN_IN = f"""
mutation SignIn($email: String!, $password: String!) {{
  signIn(email: $email, password: $password) {{
    ... on Session {{ token user {{ {USER_FIELDS} }} }} {REFUSAL}
  }}
}}
"""

SIGN_OUT = "mutation SignOut { signOut }"

CHANGE_PASSWORD = f"""
mutation ChangePassword($current: String!, $new: String!) {{
  changePassword(currentPassword: $current, newPassword: $new) {{
    ... on Session {{ token user {{ {USER_FIELDS} }} }} {REFUSAL}
  }}
}}
"""

RESET_PASSWORD = f"""
mutation ResetPassword($email: String!) {{
  resetPassword(email: $email) {{ ... on PasswordReset {{ temporaryPassword }} {REFUSAL} }}
}}
"""

ADD_ROLES = f"""
mutation AddRoles($roles: [String!]!) {{
  addRoles(roles: $roles) {{ ... on User {{ {USER_FIELDS} }} {REFUSAL} }}
}}
"""

REVOKE_ROLE = f"""
mutation RevokeRole($email: String!, $role: String!) {{
  revokeRole(email: $email, role: $role) {{ ... on User {{ {USER_FIELDS} }} {REFUSAL} }}
}}
"""

API_KEYS = "query ApiKeys { apiKeys { id name scopes createdAt } }"

CREATE_API_KEY = """
mutation CreateApiKey($name: String!, $scopes: [String!]!) {
  createApiKey(name: $name, scopes: $scopes) {
    ... on ApiKeyCreated { id name scopes key createdAt } """ + REFUSAL + """
  }
}
"""

REVOKE_API_KEY = f"""
mutation RevokeApiKey($id: ID!) {{
  revokeApiKey(id: $id) {{ ... on ApiKeyRevoked {{ id }} {REFUSAL} }}
}}
"""
