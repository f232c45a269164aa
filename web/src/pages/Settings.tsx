// Settings: who you are, the roles you act in, and your password.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { mutate } from "../api";
import { ActionButton, Card, ErrorBox, Notice } from "../components/ui";
import { credits } from "../format";
import { ADD_ROLES, CHANGE_PASSWORD, GRANT_CREDITS } from "../queries";
import { ROLES, ROLE_WORDS, type Role, rolesOf, session, setSession } from "../session";
import { useStore } from "../store";

export function SettingsPage(): JSX.Element {
  const s = useStore(session);
  return (
    <>
      <h1>Settings</h1>
      {s ? (
        <p class="lead">
          Signed in as <strong>{s.user.email}</strong>.
        </p>
      ) : null}
      <RolesCard />
      <PasswordCard />
      {s?.user.roles.includes("admin") ? <GrantCard /> : null}
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

/** An admin adds credits to a client's account: a grant, shown in its ledger as one. */
function GrantCard(): JSX.Element {
  const [email, setEmail] = useState("");
  const [amount, setAmount] = useState("");
  const [memo, setMemo] = useState("");
  const [done, setDone] = useState<string | null>(null);
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const grant = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setFormError(null);
    setDone(null);
    try {
      const { grantCredits } = await mutate(GRANT_CREDITS, { email: email.trim(), amount: amount.trim(), memo });
      setDone(`Granted ${amount.trim()} credits to ${email.trim()}: their balance is now ${credits(grantCredits.balanceMicro)} credits.`);
      setAmount("");
      setMemo("");
    } catch (err) {
      setFormError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <Card title="Grant credits (admin)">
      <p class="small muted">
        Adds credits to the client account of the user with this email, from outside the network. The client sees it in their ledger as a grant,
        with your email and the reason.
      </p>
      <form class="row" onSubmit={grant} data-testid="grant-credits">
        <label>
          The client's email
          <input name="grant-email" type="email" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </label>
        <label>
          Credits
          <input name="grant-amount" inputMode="decimal" size={10} required value={amount} onInput={(e) => setAmount(e.currentTarget.value)} />
        </label>
        <label>
          Reason <span class="hint">optional</span>
          <input name="grant-memo" maxLength={200} value={memo} onInput={(e) => setMemo(e.currentTarget.value)} />
        </label>
        <button class="primary" type="submit" disabled={busy}>
          {busy ? "Granting…" : "Grant credits"}
        </button>
      </form>
      {done ? <Notice kind="ok">{done}</Notice> : null}
      <ErrorBox error={formError} />
    </Card>
  );
}
