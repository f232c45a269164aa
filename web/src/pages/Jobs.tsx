// The client's jobs, newest first, refreshed while any is still going.
import type { JSX } from "preact";
import { Badge, Card, Empty, ErrorBox, Loading, TableWrap } from "../components/ui";
import { ago, credits, when } from "../format";
import { useNow, useQuery } from "../hooks";
import { JOBS } from "../queries";
import { Link } from "../router";

export function JobsPage(): JSX.Element {
  const now = useNow(5000);
  const { data, error } = useQuery(JOBS, { limit: 200 }, { pollMs: 3000 });
  const jobs = data?.jobs;
  return (
    <>
      <div class="title-row">
        <h1>My jobs</h1>
        <Link href="/client/jobs/new" class="button primary">
          New job
        </Link>
      </div>
      <ErrorBox error={error} />
      <Card>
        {!jobs ? (
          <Loading what="your jobs" />
        ) : jobs.length === 0 ? (
          <Empty>
            No jobs yet. <Link href="/client/jobs/new">Submit your first job</Link>.
          </Empty>
        ) : (
          <TableWrap>
          <table data-testid="jobs">
            <thead>
              <tr>
                <th>Name</th>
                <th>State</th>
                <th>Submitted</th>
                <th>Provider</th>
                <th class="num">Cost (credits)</th>
              </tr>
            </thead>
            <tbody>
              {jobs.map((j) => (
                <tr key={j.id} data-job={j.id}>
                  <td>
                    <Link href={`/client/jobs/${j.id}`}>{j.name}</Link>
                  </td>
                  <td>
                    <Badge status={j.state} title={j.reason} />
                    {j.state === "QUEUED" && j.queuePosition ? <span class="small muted"> #{j.queuePosition} in {j.queue}</span> : null}
                  </td>
                  <td title={when(j.submittedAt)}>{ago(j.submittedAt, now)}</td>
                  <td>{j.providerId ?? "—"}</td>
                  <td class="num">
                    {j.costMicro !== null ? credits(j.costMicro) : j.ended ? credits(0) : `up to ${credits(j.maxCostMicro)}`}
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
