// What the API offers: with `signUp` in its schema it has accounts; without, this is a
// development network where callers name themselves (X-Gpgpu-Client).
import { request } from "./api";
import { CAPABILITIES, ME } from "./queries";
import { session, setSession } from "./session";
import { Store } from "./store";

export interface Caps {
  auth: boolean;
}

export const caps = new Store<Caps | null>(null);
export const capsError = new Store<string | null>(null);

export async function loadCaps(): Promise<void> {
  capsError.set(null);
  try {
    const data = await request(CAPABILITIES, {});
    const names = new Set((data.__type?.fields ?? []).map((f) => f.name));
    const found: Caps = { auth: names.has("signUp") };
    // A session from the other mode (accounts arrived, or went) is no longer valid.
    const s = session.value;
    if (s && (s.mode === "auth") !== found.auth) setSession(null);
    caps.set(found);
    if (found.auth && session.value) await refreshMe();
  } catch (err) {
    capsError.set(err instanceof Error ? err.message : String(err));
  }
}

/** Re-read who we are (new providers or nodes linked to the account show up); signs out
 *  when the token is no longer accepted. */
export async function refreshMe(): Promise<void> {
  const s = session.value;
  if (!s || s.mode !== "auth") return;
  const { me } = await request(ME, {});
  if (session.value !== s) return;
  if (!me) setSession(null);
  else if (JSON.stringify(me) !== JSON.stringify(s.user)) setSession({ ...s, user: me });
}
