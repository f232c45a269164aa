// Sign up, sign in; or, on a development network without accounts, name yourself.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { ApiError, mutate } from "../api";
import { ErrorBox, Notice } from "../components/ui";
import { SIGN_IN, SIGN_UP } from "../queries";
import { Link } from "../router";
import { ROLE_WORDS, ROLES, startSession, type Role } from "../session";

/** A refusal the API made about one of the form's fields (its FieldError), shown under it. */
interface Refused {
  field: string;
  message: string;
}

/** The refusal to show under a field, or null: then the error goes in the box. */
function refusalOf(err: unknown, fields: string[]): Refused | null {
  return err instanceof ApiError && fields.includes(err.field) ? { field: err.field, message: err.reason } : null;
}

function FieldNote(props: { refused: Refused | null; field: string }): JSX.Element | null {
  if (props.refused?.field !== props.field) return null;
  return (
    <ul class="field-errors" id={`err-${props.field}`} data-testid={`err-${props.field}`} role="alert">
      <li>{props.refused.message}</li>
    </ul>
  );
}

/** The input's marks while a refusal is about it. */
function marked(refused: Refused | null, field: string): { "aria-invalid"?: boolean; "aria-describedby"?: string } {
  return refused?.field === field ? { "aria-invalid": true, "aria-describedby": `err-${field}` } : {};
}

function RolePicker(props: { roles: Role[]; onChange: (roles: Role[]) => void }): JSX.Element {
  return (
    <fieldset class="roles">
      <legend>What do you want to do? (pick one or more)</legend>
      {ROLES.map((r) => (
        <label class="check">
          <input
            type="checkbox"
            name={`role-${r}`}
            checked={props.roles.includes(r)}
            onChange={(e) => {
              const on = (e.currentTarget as HTMLInputElement).checked;
              props.onChange(on ? [...props.roles, r] : props.roles.filter((x) => x !== r));
            }}
          />
          <span>
            <strong>{ROLE_WORDS[r].name}</strong> — {ROLE_WORDS[r].about}
          </span>
        </label>
      ))}
    </fieldset>
  );
}

export function SignInPage(props: { auth: boolean }): JSX.Element {
  return props.auth ? <AccountSignIn /> : <DevSignIn />;
}

function AccountSignIn(): JSX.Element {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [refused, setRefused] = useState<Refused | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setRefused(null);
    try {
      const { signIn } = await mutate(SIGN_IN, { email, password });
      startSession("auth", signIn.user, signIn.token);
    } catch (err) {
      const onField = refusalOf(err, ["email", "password"]);
      if (onField) setRefused(onField);
      else setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card auth" onSubmit={submit}>
      <h1>Sign in to GPGPU</h1>
      <label>
        Email
        <input
          name="email"
          type="email"
          autoComplete="username"
          required
          value={email}
          onInput={(e) => setEmail(e.currentTarget.value)}
          {...marked(refused, "email")}
        />
        <FieldNote refused={refused} field="email" />
      </label>
      <label>
        Password
        <input
          name="password"
          type="password"
          autoComplete="current-password"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
          {...marked(refused, "password")}
        />
        <FieldNote refused={refused} field="password" />
      </label>
      <ErrorBox error={error} />
      <button class="primary" type="submit" disabled={busy}>
        {busy ? "Signing in…" : "Sign in"}
      </button>
      <p>
        New here? <Link href="/signup">Create an account</Link>
      </p>
    </form>
  );
}

export function SignUpPage(): JSX.Element {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [roles, setRoles] = useState<Role[]>(["client"]);
  const [error, setError] = useState<string | null>(null);
  const [refused, setRefused] = useState<Refused | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    if (!roles.length) {
      setRefused({ field: "roles", message: "pick at least one" });
      return;
    }
    setBusy(true);
    setRefused(null);
    try {
      const { signUp } = await mutate(SIGN_UP, { email, password, roles });
      startSession("auth", signUp.user, signUp.token);
    } catch (err) {
      const onField = refusalOf(err, ["email", "password", "roles"]);
      if (onField) setRefused(onField);
      else setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card auth" onSubmit={submit}>
      <h1>Create your GPGPU account</h1>
      <label>
        Email
        <input
          name="email"
          type="email"
          autoComplete="username"
          required
          value={email}
          onInput={(e) => setEmail(e.currentTarget.value)}
          {...marked(refused, "email")}
        />
        <FieldNote refused={refused} field="email" />
      </label>
      <label>
        Password
        <input
          name="password"
          type="password"
          autoComplete="new-password"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
          {...marked(refused, "password")}
        />
        <FieldNote refused={refused} field="password" />
      </label>
      <RolePicker roles={roles} onChange={setRoles} />
      <FieldNote refused={refused} field="roles" />
      <ErrorBox error={error} />
      <button class="primary" type="submit" disabled={busy}>
        {busy ? "Creating your account…" : "Create account"}
      </button>
      <p>
        Already have an account? <Link href="/signin">Sign in</Link>
      </p>
    </form>
  );
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

function DevSignIn(): JSX.Element {
  const [name, setName] = useState("demo");
  const [roles, setRoles] = useState<Role[]>(["client", "provider", "operator"]);
  const [error, setError] = useState<string | null>(null);
  const submit = (e: Event) => {
    e.preventDefault();
    if (!NAME.test(name)) {
      setError("client: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit");
      return;
    }
    if (!roles.length) {
      setError("roles: pick at least one");
      return;
    }
    startSession("dev", { id: name, email: "", roles, clientId: name, providerIds: [], nodeIds: [] });
  };
  return (
    <form class="card auth" onSubmit={submit}>
      <h1>GPGPU</h1>
      <Notice kind="warn">
        This network has no accounts yet (it is a development network): anyone may act as any client, and see
        every provider and node. Pick a name for your storage space and jobs.
      </Notice>
      <label>
        Your client name
        <input name="client" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </label>
      <RolePicker roles={roles} onChange={setRoles} />
      <ErrorBox error={error} />
      <button class="primary" type="submit">
        Continue
      </button>
    </form>
  );
}
