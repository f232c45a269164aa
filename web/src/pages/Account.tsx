// The client's balance, what is held for running jobs, and every ledger entry.
import type { JSX } from "preact";
import { Card, Empty, ErrorBox, Loading, Stat, TableWrap } from "../components/ui";
import { counterpartyWords, credits, when } from "../format";
import { Link } from "../router";
import { useQuery } from "../hooks";
import { ACCOUNT, type LedgerEntry } from "../queries";

const KIND_WORDS: Record<string, string> = {
  deposit: "deposit",
  escrow: "held for a job",
  refund: "returned from a job",
  payment: "paid for GPU time",
  fee: "network fee",
  verification: "verification",
  withdrawal: "withdrawal",
  grant: "credits granted",
};

// Memos that only repeat the kind.
const PLAIN_MEMOS = new Set(["deposit", "escrow", "escrow refund", "payment for GPU time", "protocol fee"]);

function Counterparty(props: { name: string }): JSX.Element {
  const w = counterpartyWords(props.name);
  return w.jobId ? <Link href={`/client/jobs/${w.jobId}`}>{w.text}</Link> : <>{w.text}</>;
}

export function LedgerTable(props: { entries: LedgerEntry[] }): JSX.Element {
  if (!props.entries.length) return <Empty>No entries yet.</Empty>;
  return (
    <TableWrap>
    <table data-testid="ledger">
      <thead>
        <tr>
          <th>When</th>
          <th>What</th>
          <th>With</th>
          <th class="num">Amount</th>
          <th class="num">Balance after</th>
        </tr>
      </thead>
      <tbody>
        {props.entries.map((e) => (
          <tr key={e.seq}>
            <td>{when(e.at)}</td>
            <td title={e.memo}>
              {KIND_WORDS[e.kind] ?? e.kind}
              {e.memo && !PLAIN_MEMOS.has(e.memo) && e.memo !== e.kind ? <span class="muted small"> · {e.memo}</span> : null}
            </td>
            <td class="small" title={e.counterparty}>
              <Counterparty name={e.counterparty} />
            </td>
            <td class={`num ${e.amountMicro < 0 ? "neg" : "pos"}`}>{credits(e.amountMicro)}</td>
            <td class="num">{credits(e.balanceMicro)}</td>
          </tr>
        ))}
      </tbody>
    </table>
    </TableWrap>
  );
}

export function AccountPage(): JSX.Element {
  const { data, error } = useQuery(ACCOUNT, { limit: 200 }, { pollMs: 5000 });
  return (
    <>
      <h1>Balance</h1>
      <ErrorBox error={error} />
      {!data ? (
        <Loading what="your balance" />
      ) : (
        <>
          <Card>
            <div class="stats">
              <Stat label="Available" testid="balance" value={`${credits(data.account.balanceMicro)} credits`} />
              <Stat
                label="Held for running jobs"
                value={`${credits(data.account.escrowMicro)} credits`}
                hint="each job's most it can cost; the unused part comes back when it ends"
              />
            </div>
          </Card>
          <Card title="Ledger">
            <LedgerTable entries={data.ledger} />
          </Card>
        </>
      )}
    </>
  );
}
