// The shell: who is signed in, which role they act in, and which page the path names.
import type { JSX } from "preact";
import { useEffect, useRef } from "preact/hooks";
import { mutate } from "./api";
import { caps, capsError, loadCaps } from "./caps";
import { ErrorBox } from "./components/ui";
import { AccountPage } from "./pages/Account";
import { ApiKeysPage } from "./pages/ApiKeys";
import { JobPage } from "./pages/Job";
import { JobsPage } from "./pages/Jobs";
import { MarketPage } from "./pages/Market";
import { NewJobPage } from "./pages/NewJob";
import { OperatorPage } from "./pages/Operator";
import { ProviderPage } from "./pages/Provider";
import { SignInPage, SignUpPage } from "./pages/SignIn";
import { SettingsPage } from "./pages/Settings";
import { StoragePage } from "./pages/Storage";
import { SIGN_OUT } from "./queries";
import { Link, match, navigate, path } from "./router";
import { ROLE_WORDS, rolesOf, session, setSession, switchRole, type Role, type Session } from "./session";
import { useStore } from "./store";

const HOME: Record<Role, string> = { client: "/client/jobs", provider: "/provider", operator: "/operator" };

const NAV: Record<Role, [string, string][]> = {
  client: [
    ["/client/storage", "My files"],
    ["/client/jobs/new", "New job"],
    ["/client/jobs", "My jobs"],
    ["/client/account", "Balance"],
    ["/market", "Market"],
  ],
  provider: [
    ["/provider", "My GPUs"],
    ["/market", "Market"],
  ],
  operator: [
    ["/operator", "My node"],
    ["/market", "Market"],
  ],
};

function roleOfPath(at: string): Role | null {
  if (at.startsWith("/client")) return "client";
  if (at.startsWith("/provider")) return "provider";
  if (at.startsWith("/operator")) return "operator";
  return null;
}

/** Each route's own title (the tab, the history, what a screen reader announces). */
export function titleOf(at: string): string {
  let m: Record<string, string> | null;
  const name = ((): string => {
    if (at === "/signin") return "Sign in";
    if (at === "/signup") return "Create an account";
    if (match("/client/storage", at)) return "My files";
    if (match("/client/jobs/new", at)) return "New job";
    if ((m = match("/client/jobs/:id", at))) return `Job ${m.id.slice(0, 8)}`;
    if (match("/client/jobs", at)) return "My jobs";
    if (match("/client/account", at)) return "Balance";
    if (match("/provider", at)) return "My GPUs";
    if ((m = match("/provider/:id", at))) return `Provider ${m.id}`;
    if (match("/operator", at)) return "My node";
    if (match("/keys", at)) return "API keys";
    if (match("/settings", at)) return "Settings";
    if (match("/market", at)) return "Market";
    return "Page not found";
  })();
  return `${name} · GPGPU`;
}

// Where a signed-out visitor wanted to go: they land there once signed in.
const NEXT = "gpgpu.next";

function page(at: string, s: Session): JSX.Element {
  let m: Record<string, string> | null;
  if (match("/client/storage", at)) return <StoragePage />;
  if (match("/client/jobs/new", at)) return <NewJobPage />;
  if ((m = match("/client/jobs/:id", at))) return <JobPage id={m.id} />;
  if (match("/client/jobs", at)) return <JobsPage />;
  if (match("/client/account", at)) return <AccountPage />;
  if (match("/provider", at)) return <ProviderPage />;
  if ((m = match("/provider/:id", at))) return <ProviderPage only={m.id} />;
  if (match("/operator", at)) return <OperatorPage />;
  if (match("/keys", at) && s.mode === "auth") return <ApiKeysPage />;
  if (match("/settings", at) && s.mode === "auth") return <SettingsPage />;
  if (match("/market", at)) return <MarketPage />;
  return (
    <div class="card">
      <h1>Page not found</h1>
      <p>
        There is no page at <code>{at}</code>. <Link href={HOME[s.role]}>Go to your start page</Link>.
      </p>
    </div>
  );
}

async function signOut(s: Session): Promise<void> {
  if (s.mode === "auth") {
    try {
      await mutate(SIGN_OUT, {});
    } catch {
      /* the token may already be gone: sign out here anyway */
    }
  }
  setSession(null);
  navigate("/signin");
}

function Header(props: { s: Session; at: string }): JSX.Element {
  const { s, at } = props;
  const roles = rolesOf(s.user);
  return (
    <header class="top">
      <Link href={HOME[s.role]} class="brand">
        GPGPU
      </Link>
      <nav aria-label="Pages">
        {NAV[s.role].map(([href, label]) => (
          <Link href={href} class={at === href ? "current" : ""}>
            {label}
          </Link>
        ))}
        {s.mode === "auth" ? (
          <>
            <Link href="/keys" class={at === "/keys" ? "current" : ""}>
              API keys
            </Link>
            <Link href="/settings" class={at === "/settings" ? "current" : ""}>
              Settings
            </Link>
          </>
        ) : null}
      </nav>
      <div class="who">
        {roles.length > 1 ? (
          <label class="role-switch">
            <span class="wide-only">Acting as </span>
            <select
              aria-label="Acting as"
              data-testid="role-switch"
              value={s.role}
              onChange={(e) => {
                const role = (e.currentTarget as HTMLSelectElement).value as Role;
                switchRole(role);
                navigate(HOME[role]);
              }}
            >
              {roles.map((r) => (
                <option value={r}>{ROLE_WORDS[r].name}</option>
              ))}
            </select>
          </label>
        ) : (
          <span class="role-one">{ROLE_WORDS[s.role].name}</span>
        )}
        <span class="email" data-testid="who" title={s.mode === "auth" ? s.user.email : undefined}>
          {s.mode === "auth" ? s.user.email : `client “${s.user.clientId}”`}
        </span>
        <button type="button" class="plain" onClick={() => signOut(s)}>
          Sign out
        </button>
      </div>
    </header>
  );
}

export function App(): JSX.Element {
  const c = useStore(caps);
  const cErr = useStore(capsError);
  const s = useStore(session);
  const at = useStore(path);

  useEffect(() => {
    void loadCaps();
  }, []);

  const open = at === "/signin" || at === "/signup";
  useEffect(() => {
    if (!c) return;
    if (!s && !open) {
      if (at !== "/") sessionStorage.setItem(NEXT, at + location.search + location.hash);
      navigate("/signin", true);
    } else if (s && (open || at === "/")) {
      const next = sessionStorage.getItem(NEXT);
      sessionStorage.removeItem(NEXT);
      navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : HOME[s.role], true);
    }
    else if (s) {
      // A link into another role's pages: switch to it when the user holds it.
      const want = roleOfPath(at);
      if (want && want !== s.role && rolesOf(s.user).includes(want)) switchRole(want);
    }
  }, [c, s, at, open]);

  useEffect(() => {
    document.title = titleOf(at);
  }, [at]);

  // After a navigation, focus moves to the new page's main heading (once it has loaded),
  // so a screen reader reads the new page and Tab starts from it, not from the nav link.
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    let tries = 0;
    const timer = setInterval(() => {
      const h1 = document.querySelector<HTMLElement>("main h1");
      if (h1 || ++tries > 40) clearInterval(timer);
      if (h1) {
        h1.tabIndex = -1;
        h1.focus({ preventScroll: true });
      }
    }, 50);
    return () => clearInterval(timer);
  }, [at]);

  if (cErr) {
    return (
      <main class="narrow">
        <h1>GPGPU</h1>
        <ErrorBox title="The network did not answer:" error={cErr} />
        <button type="button" class="primary" onClick={() => loadCaps()}>
          Try again
        </button>
      </main>
    );
  }
  if (!c) return <main class="narrow muted">Connecting to the network…</main>;
  if (!s) {
    return <main class="narrow" id="main">{at === "/signup" && c.auth ? <SignUpPage /> : <SignInPage auth={c.auth} />}</main>;
  }
  const want = roleOfPath(at);
  const allowed = !want || rolesOf(s.user).includes(want);
  return (
    <>
      <a class="skip" href="#main">
        Skip to the page
      </a>
      <Header s={s} at={at} />
      {s.mode === "dev" ? (
        <div class="devbar">
          Development network without accounts: you act as client “{s.user.clientId}” and can see every provider
          and node.
        </div>
      ) : null}
      <main id="main" tabIndex={-1}>
        {allowed ? (
          page(at, s)
        ) : (
          <div class="card">
            <h1>Not one of your roles</h1>
            <p>
              This page is for a {ROLE_WORDS[want].name.toLowerCase()}, and your account does not hold that role.{" "}
              <Link href={HOME[s.role]}>Back to your start page</Link>
            </p>
          </div>
        )}
      </main>
    </>
  );
}
