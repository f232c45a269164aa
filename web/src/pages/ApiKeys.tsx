// API keys: for the CLI, the SDK and provider agents. A new key is shown once.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { mutate } from "../api";
import { ActionButton, Card, Empty, ErrorBox, Loading, Notice } from "../components/ui";
import { when } from "../format";
import { useQuery } from "../hooks";
import { ADD_ROLES, API_KEYS, CHANGE_PASSWORD, CREATE_API_KEY, REVOKE_API_KEY } from "../queries";
import { ROLES, ROLE_WORDS, type Role, rolesOf, session, setSession } from "../session";
import { useStore } from "../store";

export function ApiKeysPage(): JSX.Element {
  const s = useStore(session);
  const roles = s ? rolesOf(s.user) : [];
  const { data, error, refetch } = useQuery(API_KEYS, {});
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(roles);
  const [created, setCreated] = useState<{ name: string; key: string } | null>(null);
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [copied, setCopied] = useState(false);

  const create = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setFormError(null);
    setCopied(false);
    try {
      const { createApiKey } = await mutate(CREATE_API_KEY, { name: name.trim(), scopes });
      setCreated({ name: createApiKey.name, key: createApiKey.key });
      setName("");
      refetch();
    } catch (err) {
      setFormError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <h1>API keys</h1>
      <p class="lead">
        A key lets the <code>gpgpu</code> command, your programs, or your GPU machines act for you. Give each its own
        key, so you can revoke one without the others.
      </p>
      {created ? (
        <Notice kind="ok">
          <p>
            Your new key <strong>{created.name}</strong>. Copy it now: it is shown only this once.
          </p>
          <div class="row">
            <code class="secret" data-testid="new-key">
              {created.key}
            </code>
            <button
              type="button"
              class="plain"
              onClick={() => navigator.clipboard?.writeText(created.key).then(() => setCopied(true))}
            >
              {copied ? "Copied" : "Copy"}
            </button>
            <button type="button" class="plain" onClick={() => setCreated(null)}>
              I saved it
            </button>
          </div>
        </Notice>
      ) : null}
      <Card title="Create a key">
        <form class="row" onSubmit={create}>
          <label>
            Name <span class="hint">e.g. laptop, gpu-box-1</span>
            <input name="key-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
          </label>
          <fieldset class="inline">
            <legend>It may act as</legend>
            {roles.map((r) => (
              <label class="check">
                <input
                  type="checkbox"
                  name={`scope-${r}`}
                  checked={scopes.includes(r)}
                  onChange={(e) =>
                    setScopes(e.currentTarget.checked ? [...scopes, r] : scopes.filter((x) => x !== r))
                  }
                />
                {ROLE_WORDS[r].name}
              </label>
            ))}
          </fieldset>
          <button class="primary" type="submit" disabled={busy}>
            {busy ? "Creating…" : "Create key"}
          </button>
        </form>
        <ErrorBox error={formError} />
      </Card>
      {s?.mode === "auth" ? <RolesCard /> : null}
      {s?.mode === "auth" ? <PasswordCard /> : null}
      <Card title="Your keys">
        <ErrorBox error={error} />
        {!data ? (
          <Loading what="your keys" />
        ) : data.apiKeys.length === 0 ? (
          <Empty>No keys yet.</Empty>
        ) : (
          <table data-testid="api-keys">
            <thead>
              <tr>
                <th>Name</th>
                <th>May act as</th>
                <th>Created</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {data.apiKeys.map((k) => (
                <tr key={k.id} data-key-name={k.name}>
                  <td>{k.name}</td>
                  <td>{k.scopes.join(", ")}</td>
                  <td>{when(k.createdAt)}</td>
                  <td>
                    <ActionButton kind="danger" onClick={() => mutate(REVOKE_API_KEY, { id: k.id }).then(refetch)}>
                      Revoke
                    </ActionButton>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Card>
    </>
  );
}

/** More roles: a client who starts offering GPUs, say. An admin takes one away. */
function RolesCard(): JSX.Element | null {
  const s = useStore(session);
  const [added, setAdded] = useState<Role | null>(null);
  if (!s) return null;
  const held = rolesOf(s.user);
  const missing = ROLES.filter((r) => !held.includes(r));

  const add = async (role: Role) => {
    const { addRoles } = await mutate(ADD_ROLES, { roles: [role] });
    const now = session.value;
    if (now) setSession({ ...now, user: { ...now.user, ...addRoles } });
    setAdded(role);
  };

  return (
    <Card title="Your roles">
      <p data-testid="roles-held">You act as {held.map((r) => ROLE_WORDS[r].name).join(", ")}.</p>
      {missing.length > 0 ? (
        <div class="row">
          {missing.map((r) => (
            <ActionButton kind="plain" testid={`add-role-${r}`} title={ROLE_WORDS[r].about} onClick={() => add(r)}>
              Also act as {ROLE_WORDS[r].name}
            </ActionButton>
          ))}
        </div>
      ) : null}
      {added ? (
        <Notice kind="ok">
          You can act as {ROLE_WORDS[added].name} now: pick it under "Acting as". A key keeps the roles it was made
          with, so create a new one for a program that acts as {ROLE_WORDS[added].name}.
        </Notice>
      ) : null}
    </Card>
  );
}

/** A new password: asks for the current one; the account's other sessions end. */
function PasswordCard(): JSX.Element {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [done, setDone] = useState(false);
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const change = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setFormError(null);
    setDone(false);
    try {
      const { changePassword } = await mutate(CHANGE_PASSWORD, { current, next });
      const s = session.value;
      if (s) setSession({ ...s, token: changePassword.token, user: changePassword.user });
      setCurrent("");
      setNext("");
      setDone(true);
    } catch (err) {
      setFormError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Card title="Your password">
      <form class="row" onSubmit={change}>
        <label>
          Current password
          <input
            name="current-password"
            type="password"
            autocomplete="current-password"
            required
            value={current}
            onInput={(e) => setCurrent(e.currentTarget.value)}
          />
        </label>
        <label>
          New password <span class="hint">at least 8 characters</span>
          <input
            name="new-password"
            type="password"
            autocomplete="new-password"
            required
            minLength={8}
            value={next}
            onInput={(e) => setNext(e.currentTarget.value)}
          />
        </label>
        <button class="primary" type="submit" disabled={busy}>
          {busy ? "Changing…" : "Change password"}
        </button>
      </form>
      {done ? <Notice kind="ok">Password changed. Your other sessions have been signed out.</Notice> : null}
      <ErrorBox error={formError} />
    </Card>
  );
}
