// How to join as a provider, filled in: install, this network's URL, the key, a provider
// id of one's own, a price; one block to copy and paste on the machine with the GPUs.
import type { JSX } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { session } from "../session";
import { useStore } from "../store";

/** A provider id nobody else is likely to pick: the email's name, "gpus", 4 random hex digits. */
function uniqueId(email: string | undefined): string {
  const base = (email?.split("@")[0] ?? "my").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 24) || "my";
  const bytes = new Uint8Array(2);
  crypto.getRandomValues(bytes);
  return `${base}-gpus-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function ProviderStart(props: { apiKey?: string }): JSX.Element {
  const s = useStore(session);
  const id = useMemo(() => uniqueId(s?.user.email), [s?.user.email]);
  const [price, setPrice] = useState("2.5");
  const [simulate, setSimulate] = useState(true);
  const [copied, setCopied] = useState(false);
  // The wheel's name carries the network's version (GET /downloads/, api/downloads.py); the
  // source archive, which pip must build first, until it is known or where it is not served.
  const [pkg, setPkg] = useState({ path: "/downloads/gpgpu.tar.gz", kind: "sdist" });
  useEffect(() => {
    let live = true;
    fetch("/downloads/")
      .then((r) => (r.ok ? r.json() : null))
      .then((d: { wheel?: string } | null) => {
        if (live && d?.wheel) setPkg({ path: d.wheel, kind: "wheel" });
      })
      .catch(() => undefined);
    return () => {
      live = false;
    };
  }, []);
  const key = props.apiKey ?? "<your provider key: API keys, “It may act as: GPU provider”>";
  const block = [
    "# 1. Install the agent from this network (Python 3.11; in a virtualenv if you like)",
    `pip install ${location.origin}${pkg.path}`,
    "# 2. Point it at this network, with your key",
    `export GPGPU_API_URL=${location.origin}`,
    `export GPGPU_API_KEY=${key}`,
    "# 3. Start it" + (simulate ? " (--simulate declares GPUs: for a machine without an NVIDIA driver, to try it out)" : ""),
    `gpgpu provider start --provider-id ${id} --price ${price.trim() || "2.5"}${simulate ? " --simulate 1xH100:80" : ""}`,
  ].join("\n");
  return (
    <div class="provider-start" data-testid="provider-start">
      <div class="row">
        <label>
          Your price per GPU-hour (credits)
          <input name="start-price" inputMode="decimal" size={6} value={price} onInput={(e) => setPrice(e.currentTarget.value)} />
        </label>
        <label class="check">
          <input type="checkbox" name="start-simulate" checked={simulate} onChange={(e) => setSimulate(e.currentTarget.checked)} />
          This machine has no NVIDIA GPU: simulate one (--simulate)
        </label>
      </div>
      <pre class="copy-block" data-testid="provider-start-block" data-package={pkg.kind} tabIndex={0}>
        {block}
      </pre>
      <button type="button" class="primary" onClick={() => navigator.clipboard?.writeText(block).then(() => setCopied(true))}>
        {copied ? "Copied" : "Copy"}
      </button>
      <p class="small muted">
        When it connects, <strong>{id}</strong> shows on <em>My GPUs</em> within a few seconds, online, with each GPU's
        status and a heartbeat every few seconds; jobs that fit your price come to it on their own. Stop it with Ctrl-C:
        a job running finishes first. Without an NVIDIA driver and without <code>--simulate</code> the agent stops, saying
        so.
      </p>
    </div>
  );
}
