// A job's output, live (subscription jobLog): a fixed-height, labelled log region that
// follows new output until the reader scrolls up, and says what it is showing.
import type { JSX } from "preact";
import { useCallback, useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { bytes } from "../format";
import { useSubscription } from "../hooks";
import { JOB_LOG, type JobLogChunk } from "../queries";

/** The log as text: each run's output after a line naming it, gaps said in words. */
export function logText(chunks: JobLogChunk[]): string {
  const runs = new Set(chunks.map((c) => c.attempt));
  let attempt: number | null = null;
  let out = "";
  for (const c of chunks) {
    if (c.attempt !== attempt && runs.size > 1) {
      if (out && !out.endsWith("\n")) out += "\n";
      out += `── run ${c.attempt} on ${c.providerId} ──\n`;
    }
    attempt = c.attempt;
    if (c.skippedBytes > 0) {
      if (out && !out.endsWith("\n")) out += "\n";
      out += `… ${bytes(c.skippedBytes)} of earlier output not kept …\n`;
    }
    out += c.text;
  }
  return out;
}

export function JobLog(props: { jobId: string; ended: boolean; tail?: string }): JSX.Element {
  const [chunks, setChunks] = useState<JobLogChunk[]>([]);
  const [done, setDone] = useState(false);
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLPreElement>(null);

  useEffect(() => {
    setChunks([]);
    setDone(false);
  }, [props.jobId]);

  const onChunk = useCallback((data: { jobLog: JobLogChunk }) => {
    const c = data.jobLog;
    setChunks((all) => (all.some((x) => x.seq === c.seq) ? all : [...all, c].sort((a, b) => a.seq - b.seq)));
  }, []);
  const sub = useSubscription(JOB_LOG, { jobId: props.jobId, after: 0 }, onChunk, { pause: done });
  // The stream ends with the job: once the job has ended, what came is all there is.
  useEffect(() => {
    if (props.ended) {
      const timer = setTimeout(() => setDone(true), 3000);
      return () => clearTimeout(timer);
    }
  }, [props.ended]);

  const text = chunks.length ? logText(chunks) : (props.tail ?? "");
  useLayoutEffect(() => {
    const el = box.current;
    if (el && follow) el.scrollTop = el.scrollHeight;
  }, [text, follow]);

  const onScroll = () => {
    const el = box.current;
    if (!el) return;
    const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
    if (atEnd !== follow) setFollow(atEnd);
  };

  const status = props.ended
    ? chunks.length
      ? "The job has ended: this is its output."
      : text
        ? "The job has ended: this is the end of its output."
        : "The job has ended without printing anything."
    : chunks.length
      ? "Live: new output appears as the job prints it."
      : "Nothing printed yet: output appears here as the job prints it.";

  return (
    <div class="job-log">
      <div class="log-bar">
        <p class="small muted" data-testid="job-log-status" aria-live="polite">
          {status}
        </p>
        <label class="check small">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.currentTarget.checked)} data-testid="log-follow" />
          Follow new output
        </label>
      </div>
      {sub.error ? <p class="small error">Live output stopped: {sub.error}</p> : null}
      <pre
        class="log live"
        ref={box}
        role="log"
        aria-label="Job output"
        tabIndex={0}
        onScroll={onScroll}
        data-testid="job-log"
        data-chunks={chunks.length}
      >
        {text || " "}
      </pre>
    </div>
  );
}
