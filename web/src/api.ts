// The GraphQL client: urql over fetch for queries and mutations, graphql-ws for
// subscriptions (the graphql-transport-ws protocol the API serves at /graphql).
import {
  Client,
  CombinedError,
  fetchExchange,
  subscriptionExchange,
  type AnyVariables,
  type DocumentInput,
} from "@urql/core";
import { createClient as createWsClient, type Client as WsClient } from "graphql-ws/client";
import { authHeaders, session, wsPayload, type Session } from "./session";

interface Bound {
  key: string;
  client: Client;
  ws: WsClient;
}

let bound: Bound | null = null;

function sessionKey(s: Session | null): string {
  return s ? `${s.mode}:${s.token ?? ""}:${s.user.clientId ?? ""}` : "anonymous";
}

function wsUrl(): string {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/graphql`;
}

/** The client for the current session; a new one (and websocket) when the caller changes. */
export function api(): Client {
  const s = session.value;
  const key = sessionKey(s);
  if (bound?.key === key) return bound.client;
  bound?.ws.dispose();
  const ws = createWsClient({
    url: wsUrl(),
    connectionParams: () => wsPayload(session.value),
    lazy: true,
    retryAttempts: 20,
    shouldRetry: () => true,
  });
  const client = new Client({
    url: "/graphql",
    preferGetMethod: false,
    requestPolicy: "network-only",
    fetchOptions: () => ({ headers: authHeaders(session.value) }),
    exchanges: [
      fetchExchange,
      subscriptionExchange({
        forwardSubscription(request) {
          const input = { ...request, query: request.query ?? "" };
          return {
            subscribe(sink) {
              const unsubscribe = ws.subscribe(input, sink);
              return { unsubscribe };
            },
          };
        },
      }),
    ],
  });
  bound = { key, client, ws };
  return client;
}

/** What the API said, as it said it: GraphQL errors name the field ("providerId: ..."). */
export function errorText(err: unknown): string {
  if (err instanceof CombinedError) {
    if (err.graphQLErrors.length) return err.graphQLErrors.map((e) => e.message).join("\n");
    if (err.networkError) return `Could not reach the network: ${err.networkError.message}`;
    return err.message;
  }
  if (err instanceof Error) return err.message;
  if (Array.isArray(err)) return err.map((e) => (e as { message?: string }).message ?? String(e)).join("\n");
  return String(err);
}

export class ApiError extends Error {
  /** The argument a refusal is about, as the schema names it ("" when none or unknown). */
  field = "";
  /** A refusal's reason without its field (the message itself for any other error). */
  reason = this.message;
}

/** A mutation's refusal the caller can mend: the `FieldError` member of its result union. */
interface FieldErrorResult {
  __typename: "FieldError";
  field: string;
  message: string;
}

function refusalOf(data: unknown): FieldErrorResult | null {
  if (!data || typeof data !== "object") return null;
  for (const value of Object.values(data)) {
    if (value && typeof value === "object" && (value as { __typename?: string }).__typename === "FieldError") {
      return value as FieldErrorResult;
    }
  }
  return null;
}

/** Run a query or mutation once; resolves to its data or throws ApiError with the API's words. */
export async function request<T, V extends AnyVariables = AnyVariables>(
  query: DocumentInput<T, V>,
  variables: V,
  kind: "query" | "mutation" = "query",
): Promise<T> {
  const client = api();
  const result =
    kind === "query"
      ? await client.query(query, variables, { requestPolicy: "network-only" }).toPromise()
      : await client.mutation(query, variables).toPromise();
  if (result.error) throw new ApiError(errorText(result.error));
  if (!result.data) throw new ApiError("The API answered without data");
  return result.data;
}

/** Run a mutation; a refusal (a `FieldError` result: its document asks `... on FieldError
 * { field message }`) throws ApiError reading "field: message", as a GraphQL error does. */
export async function mutate<T, V extends AnyVariables = AnyVariables>(
  query: DocumentInput<T, V>,
  variables: V,
): Promise<T> {
  const data = await request(query, variables, "mutation");
  const refused = refusalOf(data);
  if (refused) {
    const err = new ApiError(refused.field ? `${refused.field}: ${refused.message}` : refused.message);
    err.field = refused.field;
    err.reason = refused.message;
    throw err;
  }
  return data;
}
