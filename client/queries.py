"""The GraphQL documents both clients send; one place to keep them in step with the API."""

JOB_FIELDS = """
fragment JobFields on Job {
  id clientId name state reason providerId queuePosition
  maxCostMicro costMicro submittedAt updatedAt
  outputs { path key sha256 size }
}
"""

JOB = (
    """
query Job($id: ID!) {
  job(id: $id) { ...JobFields events { seq jobId type at data } }
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
  cancelJob(id: $id) { ...JobFields }
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

PROVIDERS = """
query Providers {
  providers {
    providerId region status lastHeartbeatAt reputation earningsMicro
    gpus { index model memoryMb busyJobId }
  }
}
"""

SUBMIT_JOB = (
    """
mutation SubmitJob($spec: JSON!) {
  submitJob(spec: $spec) {
    __typename
    ... on JobSubmitted { job { ...JobFields } }
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
