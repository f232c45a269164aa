// Small hooks over the urql client: a query that can poll, a subscription, a debounced value.
import type { AnyVariables, DocumentInput } from "@urql/core";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { api, errorText } from "./api";
import { session } from "./session";
import { useStore } from "./store";

export interface QueryState<T> {
  data: T | undefined;
  error: string | null;
  loading: boolean;
  refetch: () => void;
}

/** Run `query` now, when its variables change, every `pollMs`, and on `refetch()`.
 *  The last good data stays on screen while a refetch runs or fails. */
export function useQuery<T, V extends AnyVariables = AnyVariables>(
  query: DocumentInput<T, V>,
  variables: V,
  opts: { pollMs?: number; pause?: boolean } = {},
): QueryState<T> {
  const who = useStore(session);
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(!opts.pause);
  const [tick, setTick] = useState(0);
  const varsKey = JSON.stringify(variables);
  const refetch = useCallback(() => setTick((n) => n + 1), []);

  useEffect(() => {
    if (opts.pause) return;
    let live = true;
    setLoading(true);
    api()
      .query(query, JSON.parse(varsKey) as V, { requestPolicy: "network-only" })
      .toPromise()
      .then((result) => {
        if (!live) return;
        if (result.error) setError(errorText(result.error));
        else {
          setError(null);
          setData(result.data);
        }
        setLoading(false);
      });
    return () => {
      live = false;
    };
  }, [query, varsKey, tick, opts.pause, who]);

  useEffect(() => {
    if (!opts.pollMs || opts.pause) return;
    const timer = setInterval(refetch, opts.pollMs);
    return () => clearInterval(timer);
  }, [opts.pollMs, opts.pause, refetch]);

  return { data, error, loading, refetch };
}

/** Follow a subscription; `onData` gets each result's data. Restarts when variables change. */
export function useSubscription<T, V extends AnyVariables = AnyVariables>(
  query: DocumentInput<T, V>,
  variables: V,
  onData: (data: T) => void,
  opts: { pause?: boolean } = {},
): { error: string | null } {
  const [error, setError] = useState<string | null>(null);
  const handler = useRef(onData);
  handler.current = onData;
  const varsKey = JSON.stringify(variables);
  useEffect(() => {
    if (opts.pause) return;
    const sub = api()
      .subscription(query, JSON.parse(varsKey) as V)
      .subscribe((result) => {
        if (result.error) setError(errorText(result.error));
        else if (result.data) {
          setError(null);
          handler.current(result.data);
        }
      });
    return () => sub.unsubscribe();
  }, [query, varsKey, opts.pause]);
  return { error };
}

export function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(timer);
  }, [value, ms]);
  return settled;
}

/** Re-render every `ms` (for "3 s ago" texts). */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}
