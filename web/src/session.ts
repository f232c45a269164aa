// Who is using the UI, kept in localStorage so a reload keeps them signed in.
//
// With accounts (the API has `signUp`): a bearer token, sent as `Authorization` on
// /graphql and /storage and in the websocket's connection_init payload.
// Without (a development network, before accounts exist): the caller names itself
// with the `X-Gpgpu-Client` header, or `client` in the init payload.
import { Store } from "./store";

export type Role = "client" | "provider" | "operator";
export const ROLES: Role[] = ["client", "provider", "operator"];

export const ROLE_WORDS: Record<Role, { name: string; about: string }> = {
  client: { name: "Client", about: "I want to rent GPUs to run my jobs" },
  provider: { name: "GPU provider", about: "I want to earn credits with my GPUs" },
  operator: { name: "Node operator", about: "I run a node: its queues and its providers" },
};

export interface User {
  id: string;
  email: string;
  roles: string[];
  clientId: string | null;
  providerIds: string[];
  nodeIds: string[];
}

export interface Session {
  mode: "auth" | "dev";
  token?: string;
  user: User;
  role: Role;
}

const KEY = "gpgpu.session";

function load(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export const session = new Store<Session | null>(load());

export function setSession(next: Session | null): void {
  if (next) localStorage.setItem(KEY, JSON.stringify(next));
  else localStorage.removeItem(KEY);
  session.set(next);
}

export function rolesOf(user: User): Role[] {
  return ROLES.filter((r) => user.roles.includes(r));
}

export function startSession(mode: "auth" | "dev", user: User, token?: string): Session {
  const roles = rolesOf(user);
  const s: Session = { mode, token, user, role: roles[0] ?? "client" };
  setSession(s);
  return s;
}

export function switchRole(role: Role): void {
  const s = session.value;
  if (s) setSession({ ...s, role });
}

/** Headers that name the caller on /graphql and /storage. */
export function authHeaders(s: Session | null): Record<string, string> {
  if (!s) return {};
  if (s.mode === "auth" && s.token) return { Authorization: `Bearer ${s.token}` };
  if (s.mode === "dev" && s.user.clientId) return { "X-Gpgpu-Client": s.user.clientId };
  return {};
}

/** The graphql-transport-ws connection_init payload. */
export function wsPayload(s: Session | null): Record<string, string> {
  if (!s) return {};
  if (s.mode === "auth" && s.token) return { Authorization: `Bearer ${s.token}` };
  if (s.mode === "dev" && s.user.clientId) return { client: s.user.clientId };
  return {};
}
