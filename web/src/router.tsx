// Client-side routes over the History API; the API answers every unknown path with
// index.html, so a reload or a shared link lands on the same page.
import type { ComponentChildren, JSX } from "preact";
import { Store } from "./store";

export const path = new Store<string>(location.pathname);

addEventListener("popstate", () => path.set(location.pathname));

export function navigate(to: string, replace = false): void {
  if (to === location.pathname) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  path.set(location.pathname);
  scrollTo(0, 0);
}

/** `/client/jobs/:id` against `/client/jobs/abc` gives `{ id: "abc" }`; null when no match. */
export function match(pattern: string, at: string): Record<string, string> | null {
  const want = pattern.split("/").filter(Boolean);
  const got = at.split("/").filter(Boolean);
  if (want.length !== got.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    if (want[i].startsWith(":")) params[want[i].slice(1)] = decodeURIComponent(got[i]);
    else if (want[i] !== got[i]) return null;
  }
  return params;
}

export function Link(props: {
  href: string;
  children: ComponentChildren;
  class?: string;
  title?: string;
}): JSX.Element {
  const onClick = (e: MouseEvent) => {
    if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    navigate(props.href);
  };
  return (
    <a href={props.href} class={props.class} title={props.title} onClick={onClick}>
      {props.children}
    </a>
  );
}
