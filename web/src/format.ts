// Money is integer micro-credits everywhere; these turn numbers into words people read.

/** 1234567 -> "1.234567"; 2500000 -> "2.500000": one precision for every amount, the
 *  ledger's own (a micro-credit), so figures line up and add up. Exact: integer maths. */
export function credits(micro: number | null | undefined): string {
  if (micro === null || micro === undefined) return "—";
  const sign = micro < 0 ? "-" : "";
  const abs = Math.abs(Math.trunc(micro));
  const whole = Math.floor(abs / 1_000_000);
  const frac = String(abs % 1_000_000).padStart(6, "0");
  return `${sign}${whole.toLocaleString("en-US")}.${frac}`;
}

/** A ledger entry's other side in words: "escrow:<job id>" is that job's held credits. */
export function counterpartyWords(name: string): { text: string; jobId?: string } {
  const [kind, ...rest] = name.split(":");
  const id = rest.join(":");
  if (kind === "escrow" && id) return { text: `job ${shortId(id)}`, jobId: id };
  if (kind === "provider" && id) return { text: `provider ${id}` };
  if (kind === "client" && id) return { text: `client ${id}` };
  if (name === "protocol:fees") return { text: "the network's fee" };
  if (name === "protocol:verification") return { text: "the network's checks" };
  if (kind === "external") return { text: "from outside the network" };
  return { text: name };
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** "just now", "12 s ago", "3 min ago", "2 h ago", "in 5 min". */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "never";
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const s = Math.round((now - t) / 1000);
  const span = (x: number) =>
    x < 60 ? `${x} s` : x < 3600 ? `${Math.round(x / 60)} min` : x < 86400 ? `${Math.round(x / 3600)} h` : `${Math.round(x / 86400)} d`;
  if (Math.abs(s) < 2) return "just now";
  return s > 0 ? `${span(s)} ago` : `in ${span(-s)}`;
}

export function percent(x: number): string {
  return `${Math.round(x * 100)} %`;
}

export function shortId(id: string): string {
  return id.length > 8 ? id.slice(0, 8) : id;
}
