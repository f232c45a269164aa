// API keys: for the CLI, the SDK and provider agents. A new key is shown once.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { mutate } from "../api";
import { ActionButton, Card, Empty, ErrorBox, Loading, Notice, TableWrap } from "../components/ui";
import { when } from "../format";
import { useQuery } from "../hooks";
import { API_KEYS, CREATE_API_KEY, REVOKE_API_KEY } from "../queries";
import { ROLE_WORDS, rolesOf, session } from "../session";
import { ProviderStart } from "../components/ProviderStart";
import { Link } from "../router";
import { useStore } from "../store";

export function ApiKeysPage(): JSX.Element {
  const s = useStore(session);
  const roles = s ? rolesOf(s.user) : [];
  const { data, error, refetch } = useQuery(API_KEYS, {});
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(roles);
  const [created, setCreated] = useState<{ name: string; key: string; scopes: string[] } | null>(null);
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
      setCreated({ name: createApiKey.name, key: createApiKey.key, scopes });
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
        key, so you can revoke one without the others. Your roles and password are under{" "}
        <Link href="/settings">Settings</Link>.
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
          {created.scopes.includes("provider") ? (
            <>
              <h2>Start offering your GPUs with it</h2>
              <p>On the machine with the GPUs, run:</p>
              <ProviderStart apiKey={created.key} />
            </>
          ) : null}
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
      <Card title="Your keys">
        <ErrorBox error={error} />
        {!data ? (
          <Loading what="your keys" />
        ) : data.apiKeys.length === 0 ? (
          <Empty>No keys yet.</Empty>
        ) : (
          <TableWrap>
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
          </TableWrap>
        )}
      </Card>
    </>
  );
}
