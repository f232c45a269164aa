// Every GraphQL document the UI sends, with the shapes it expects back.
import { gql } from "@urql/core";
import type { User } from "./session";

// ---- shapes ---------------------------------------------------------------

export interface FieldError {
  field: string;
  message: string;
}
export interface SpecRejected {
  __typename: "SpecRejected";
  errors: FieldError[];
}
export interface OutputFile {
  path: string;
  key: string;
  digest: string;
  size: number;
}
export interface JobEvent {
  seq: number;
  jobId: string;
  type: string;
  /** The event ends the job (the API's one list of ending events). */
  ends: boolean;
  at: string;
  data: Record<string, unknown>;
}
export interface Job {
  id: string;
  clientId: string;
  name: string;
  state: string;
  ended: boolean;
  reason: string;
  providerId: string | null;
  queue: string;
  priority: number;
  queuePosition: number | null;
  expectedStart: string | null;
  maxCostMicro: number;
  costMicro: number | null;
  submittedAt: string;
  updatedAt: string;
  outputs: OutputFile[];
}
export interface Offer {
  providerId: string;
  gpuIndexes: number[];
  pricePerGpuHourMicro: number;
  quoteMicro: number;
  reputation: number;
  expectedStart: string;
  restingUntil: string | null;
}
export interface Explanation {
  __typename: "Explanation";
  eligible: Offer[];
  rejected: { providerId: string; reason: string }[];
  heldMicro: number;
}
export interface LedgerEntry {
  seq: number;
  transferId: string;
  amountMicro: number;
  balanceMicro: number;
  counterparty: string;
  kind: string;
  memo: string;
  at: string;
}
export interface Gpu {
  index: number;
  model: string;
  memoryMb: number;
  busyJobId: string | null;
  status: string;
  reason: string;
}
export interface GpuReading {
  index: number;
  utilizationPct: number | null;
  memoryUsedMb: number | null;
  temperatureC: number | null;
  powerW: number | null;
  eccErrors: number | null;
  xidErrors: number | null;
}
export interface TelemetrySample {
  at: string;
  gpus: GpuReading[];
}
export interface Provider {
  providerId: string;
  region: string;
  status: string;
  statusReason: string;
  lastHeartbeatAt: string | null;
  reputation: number;
  earningsMicro: number;
  pricePerGpuHourMicro: number;
  pricePerGpuHour: string;
  runtimes: string[];
  gpus: Gpu[];
}
export interface ProviderEvent {
  seq: number;
  providerId: string;
  type: string;
  at: string;
  data: Record<string, unknown>;
}
export interface Queue {
  name: string;
  gpuModels: string[];
  waiting: number;
  priorityLevels: number;
  maxGpusPerClient: number;
  fairShare: boolean;
}
export interface Node {
  nodeId: string;
  region: string;
  operator: string;
  providerIds: string[];
  queues: Queue[];
}
export interface QueuedJob {
  position: number;
  jobId: string;
  name: string;
  gpus: number;
  gpuModel: string | null;
  priority: number;
  waitingSince: string;
  expectedStart: string | null;
  mine: boolean;
  waitingFor: string[];
}
export interface ApiKey {
  id: string;
  name: string;
  scopes: string[];
  createdAt: string;
}
export interface SessionResult {
  token: string;
  user: User;
}

// ---- accounts (the auth contract) ----------------------------------------

const USER = "id email roles clientId providerIds nodeIds";

export const CAPABILITIES = gql<{ __type: { fields: { name: string }[] } | null }>`
  query Capabilities {
    __type(name: "Mutation") {
      fields {
        name
      }
    }
  }
`;

export const ME = gql<{ me: User | null }>(`query Me { me { ${USER} } }`);

// A mutation the API may refuse for a reason the caller can mend answers `<payload> |
// FieldError`; its document asks for the FieldError too, and `mutate` (api.ts) throws it.
const REFUSAL = "__typename ... on FieldError { field message }";

export const SIGN_UP = gql<
  { signUp: SessionResult },
  { email: string; password: string; roles: string[] }
>(`mutation SignUp($email: String!, $password: String!, $roles: [String!]!) {
  signUp(email: $email, password: $password, roles: $roles) {
    ... on Session { token user { ${USER} } } ${REFUSAL}
  }
}`);

export const SIGN_IN = gql<{ signIn: SessionResult }, { email: string; password: string }>(
  `mutation SignIn($email: String!, $password: String!) {
  signIn(email: $email, password: $password) {
    ... on Session { token user { ${USER} } } ${REFUSAL}
  }
}`,
);

export const ADD_ROLES = gql<{ addRoles: User }, { roles: string[] }>(
  `mutation AddRoles($roles: [String!]!) { addRoles(roles: $roles) { ... on User { ${USER} } ${REFUSAL} } }`,
);

export const CHANGE_PASSWORD = gql<
  { changePassword: SessionResult },
  { current: string; next: string }
>(`mutation ChangePassword($current: String!, $next: String!) {
  changePassword(currentPassword: $current, newPassword: $next) {
    ... on Session { token user { ${USER} } } ${REFUSAL}
  }
}`);

export const GRANT_CREDITS = gql<
  { grantCredits: { clientId: string; balanceMicro: number } },
  { email: string; amount: string; memo: string }
>(`mutation GrantCredits($email: String!, $amount: String!, $memo: String!) {
  grantCredits(email: $email, amount: $amount, memo: $memo) {
    ... on CreditsGranted { clientId balanceMicro } ${REFUSAL}
  }
}`);

export const SIGN_OUT = gql<{ signOut: boolean }>`
  mutation SignOut {
    signOut
  }
`;

export const API_KEYS = gql<{ apiKeys: ApiKey[] }>`
  query ApiKeys {
    apiKeys {
      id
      name
      scopes
      createdAt
    }
  }
`;

export const CREATE_API_KEY = gql<
  { createApiKey: ApiKey & { key: string } },
  { name: string; scopes: string[] }
>`
  mutation CreateApiKey($name: String!, $scopes: [String!]!) {
    createApiKey(name: $name, scopes: $scopes) {
      ... on ApiKeyCreated {
        id
        name
        scopes
        key
        createdAt
      }
      __typename
      ... on FieldError {
        field
        message
      }
    }
  }
`;

export const REVOKE_API_KEY = gql<{ revokeApiKey: { id: string } }, { id: string }>(
  `mutation RevokeApiKey($id: ID!) { revokeApiKey(id: $id) { ... on ApiKeyRevoked { id } ${REFUSAL} } }`,
);

// ---- client ----------------------------------------------------------------

const JOB_FIELDS = `id clientId name state ended reason providerId queue priority queuePosition
  expectedStart maxCostMicro costMicro submittedAt updatedAt outputs { path key digest size }`;

export const JOBS = gql<{ jobs: Job[] }, { limit: number }>(
  `query Jobs($limit: Int!) { jobs(limit: $limit) { ${JOB_FIELDS} } }`,
);

export const JOB = gql<{ job: (Job & { events: JobEvent[]; waitingFor: string[] }) | null }, { id: string }>(
  `query Job($id: ID!) { job(id: $id) { ${JOB_FIELDS} waitingFor events { seq jobId type ends at data } } }`,
);

export const JOB_EVENTS = gql<{ jobEvents: JobEvent }, { jobId: string; after: number }>`
  subscription JobEvents($jobId: ID!, $after: Int!) {
    jobEvents(jobId: $jobId, after: $after) {
      seq
      jobId
      type
      ends
      at
      data
    }
  }
`;

export interface JobLogChunk {
  seq: number;
  attempt: number;
  providerId: string;
  at: string;
  text: string;
  skippedBytes: number;
}

export const JOB_LOG = gql<{ jobLog: JobLogChunk }, { jobId: string; after: number }>`
  subscription JobLog($jobId: ID!, $after: Int!) {
    jobLog(jobId: $jobId, after: $after) {
      seq
      attempt
      providerId
      at
      text
      skippedBytes
    }
  }
`;

export const CANCEL_JOB = gql<{ cancelJob: { id: string; state: string } }, { id: string }>`
  mutation CancelJob($id: ID!) {
    cancelJob(id: $id) {
      ... on Job {
        id
        state
      }
      __typename
      ... on FieldError {
        field
        message
      }
    }
  }
`;

export const SUBMIT_JOB = gql<
  { submitJob: { __typename: "JobSubmitted"; job: { id: string } } | SpecRejected },
  { spec: unknown }
>`
  mutation SubmitJob($spec: JSON!) {
    submitJob(spec: $spec) {
      __typename
      ... on JobSubmitted {
        job {
          id
        }
      }
      ... on SpecRejected {
        errors {
          field
          message
        }
      }
    }
  }
`;

export const EXPLAIN = gql<{ explain: Explanation | SpecRejected }, { spec: unknown }>`
  query Explain($spec: JSON!) {
    explain(spec: $spec) {
      __typename
      ... on Explanation {
        eligible {
          providerId
          gpuIndexes
          pricePerGpuHourMicro
          quoteMicro
          reputation
          expectedStart
          restingUntil
        }
        rejected {
          providerId
          reason
        }
        heldMicro
      }
      ... on SpecRejected {
        errors {
          field
          message
        }
      }
    }
  }
`;

export const ACCOUNT = gql<
  {
    account: { clientId: string; balanceMicro: number; escrowMicro: number };
    ledger: LedgerEntry[];
  },
  { limit: number }
>`
  query Account($limit: Int!) {
    account {
      clientId
      balanceMicro
      escrowMicro
    }
    ledger(limit: $limit) {
      seq
      transferId
      amountMicro
      balanceMicro
      counterparty
      kind
      memo
      at
    }
  }
`;

/** What the job form offers: GPU models on the network and every node's queues. */
export const JOB_FORM_CHOICES = gql<{
  providers: { providerId: string; gpus: { model: string; memoryMb: number }[] }[];
  nodes: { nodeId: string; queues: { name: string; gpuModels: string[]; priorityLevels: number }[] }[];
}>`
  query JobFormChoices {
    providers {
      providerId
      gpus {
        model
        memoryMb
      }
    }
    nodes {
      nodeId
      queues {
        name
        gpuModels
        priorityLevels
      }
    }
  }
`;

// ---- provider --------------------------------------------------------------

const PROVIDER_FIELDS = `providerId region status statusReason lastHeartbeatAt reputation
  earningsMicro pricePerGpuHourMicro pricePerGpuHour runtimes
  gpus { index model memoryMb busyJobId status reason }`;

export const PROVIDERS = gql<{ providers: Provider[] }>(
  `query Providers { providers { ${PROVIDER_FIELDS} } }`,
);

export const PROVIDER = gql<
  {
    provider: (Provider & { telemetry: TelemetrySample[] }) | null;
    providerEarnings: {
      balanceMicro: number;
      earnedMicro: number;
      verifiedMicro: number;
      withdrawnMicro: number;
      entries: LedgerEntry[];
    };
  },
  { id: string; samples: number }
>(`query Provider($id: String!, $samples: Int!) {
  provider(providerId: $id) {
    ${PROVIDER_FIELDS}
    telemetry(limit: $samples) {
      at gpus { index utilizationPct memoryUsedMb temperatureC powerW eccErrors xidErrors }
    }
  }
  providerEarnings(providerId: $id, limit: 50) {
    balanceMicro earnedMicro verifiedMicro withdrawnMicro
    entries { seq transferId amountMicro balanceMicro counterparty kind memo at }
  }
}`);

export const PROVIDER_EVENTS = gql<
  { providerEvents: ProviderEvent },
  { providerId: string; after: number }
>`
  subscription ProviderEvents($providerId: String!, $after: Int!) {
    providerEvents(providerId: $providerId, after: $after) {
      seq
      providerId
      type
      at
      data
    }
  }
`;

export const SUSPEND_GPU = gql<{ suspendGpu: { providerId: string } }, { id: string; index: number }>(
  `mutation SuspendGpu($id: String!, $index: Int!) {
  suspendGpu(providerId: $id, index: $index) { ... on Provider { providerId } ${REFUSAL} }
}`,
);

export const RESUME_GPU = gql<{ resumeGpu: { providerId: string } }, { id: string; index: number }>(
  `mutation ResumeGpu($id: String!, $index: Int!) {
  resumeGpu(providerId: $id, index: $index) { ... on Provider { providerId } ${REFUSAL} }
}`,
);

export const SET_PRICE = gql<
  { setPrice: { providerId: string; pricePerGpuHour: string } },
  { id: string; price: string }
>(`mutation SetPrice($id: String!, $price: String!) {
  setPrice(providerId: $id, pricePerGpuHour: $price) {
    ... on Provider { providerId pricePerGpuHour } ${REFUSAL}
  }
}`);

// ---- node operator -----------------------------------------------------------

export const OPERATOR = gql<{ nodes: Node[]; providers: Provider[] }>(`query Operator {
  nodes {
    nodeId region operator providerIds
    queues { name gpuModels waiting priorityLevels maxGpusPerClient fairShare }
  }
  providers { ${PROVIDER_FIELDS} }
}`);

export const QUEUE = gql<{ queue: QueuedJob[] }, { name: string }>`
  query Queue($name: String!) {
    queue(name: $name, limit: 200) {
      position
      jobId
      name
      gpus
      gpuModel
      priority
      waitingSince
      expectedStart
      mine
      waitingFor
    }
  }
`;

export const CONFIGURE_QUEUE = gql<
  { configureQueue: { nodeId: string } },
  {
    node: string;
    name: string;
    models: string[];
    levels: number;
    cap: number;
    fair: boolean;
  }
>(`mutation ConfigureQueue(
  $node: String!
  $name: String!
  $models: [String!]!
  $levels: Int!
  $cap: Int!
  $fair: Boolean!
) {
  configureQueue(
    nodeId: $node
    name: $name
    gpuModels: $models
    priorityLevels: $levels
    maxGpusPerClient: $cap
    fairShare: $fair
  ) { ... on Node { nodeId } ${REFUSAL} }
}`);

export const REGISTER_NODE = gql<{ registerNode: { nodeId: string } }, { node: string; region: string; operator: string }>(
  `mutation RegisterNode($node: String!, $region: String!, $operator: String!) {
  registerNode(nodeId: $node, region: $region, operator: $operator) { ... on Node { nodeId } ${REFUSAL} }
}`,
);
