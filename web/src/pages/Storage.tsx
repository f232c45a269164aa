// The client's files: list, upload with progress, download, delete.
import type { JSX } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { Card, Empty, ErrorBox, Loading, Notice, ProgressBar, TableWrap } from "../components/ui";
import { bytes } from "../format";
import { session } from "../session";
import { deleteObject, downloadObject, listObjects, uploadObject, type StoredObject } from "../storage";
import { useStore } from "../store";

interface Upload {
  key: string;
  sent: number;
  total: number;
  error?: string;
  done?: boolean;
}

export function useClientId(): string | null {
  return useStore(session)?.user.clientId ?? null;
}

export function useObjects(client: string | null, prefix = ""): {
  objects: StoredObject[] | null;
  error: string | null;
  reload: () => void;
} {
  const [objects, setObjects] = useState<StoredObject[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  useEffect(() => {
    if (!client) return;
    let live = true;
    listObjects(client, prefix)
      .then((found) => live && (setObjects(found), setError(null)))
      .catch((err: Error) => live && setError(err.message));
    return () => {
      live = false;
    };
  }, [client, prefix, tick]);
  return { objects, error, reload };
}

function Row(props: { client: string; obj: StoredObject; onDeleted: () => void }): JSX.Element {
  const { client, obj } = props;
  const [confirm, setConfirm] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const act = async (what: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await what();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <tr data-key={obj.key}>
      <td class="mono">{obj.key}</td>
      <td class="num">{bytes(obj.size)}</td>
      <td class="mono small" title={obj.digest}>
        {obj.digest.slice(0, 19)}…
      </td>
      <td class="actions">
        <button type="button" class="plain" disabled={busy} onClick={() => act(() => downloadObject(client, obj.key))}>
          Download
        </button>
        {confirm ? (
          <>
            <span class="warn-text">Delete for good?</span>
            <button
              type="button"
              class="danger"
              disabled={busy}
              onClick={() => act(async () => (await deleteObject(client, obj.key), props.onDeleted()))}
            >
              Yes, delete
            </button>
            <button type="button" class="plain" onClick={() => setConfirm(false)}>
              Keep it
            </button>
          </>
        ) : (
          <button type="button" class="plain" onClick={() => setConfirm(true)}>
            Delete
          </button>
        )}
        <ErrorBox error={error} />
      </td>
    </tr>
  );
}

export function StoragePage(): JSX.Element {
  const client = useClientId();
  const [prefix, setPrefix] = useState("");
  const [folder, setFolder] = useState("inputs/");
  const [uploads, setUploads] = useState<Upload[]>([]);
  const { objects, error, reload } = useObjects(client, prefix);

  if (!client) return <Notice kind="warn">Your account has no storage space: it does not hold the client role.</Notice>;

  const upload = (files: FileList | null) => {
    if (!files) return;
    const dir = folder && !folder.endsWith("/") ? `${folder}/` : folder;
    for (const file of Array.from(files)) {
      const key = `${dir}${file.name}`;
      const entry: Upload = { key, sent: 0, total: file.size };
      setUploads((all) => [entry, ...all.filter((u) => u.key !== key)]);
      const update = (patch: Partial<Upload>) =>
        setUploads((all) => all.map((u) => (u.key === key ? { ...u, ...patch } : u)));
      const job = uploadObject(client, key, file, (sent, total) => update({ sent, total }));
      job.done.then(
        () => {
          update({ done: true });
          reload();
        },
        (err: Error) => update({ error: err.message }),
      );
    }
  };

  return (
    <>
      <h1>My files</h1>
      <p class="lead">
        Files your jobs read, and the results they write. Only you (and the GPU running your job, for that job)
        can read them.
      </p>
      <Card title="Upload files">
        <div class="row">
          <label>
            Save in folder
            <input name="folder" value={folder} onInput={(e) => setFolder(e.currentTarget.value)} placeholder="inputs/" />
          </label>
          <label class="file-pick">
            Choose files to upload
            <input
              type="file"
              name="files"
              multiple
              data-testid="upload-input"
              onChange={(e) => {
                upload(e.currentTarget.files);
                e.currentTarget.value = "";
              }}
            />
          </label>
        </div>
        {uploads.length ? (
          <ul class="uploads" data-testid="uploads">
            {uploads.map((u) => (
              <li data-key={u.key} data-done={u.done ? "yes" : "no"}>
                <span class="mono">{u.key}</span>
                <ProgressBar
                  value={u.total ? u.sent / u.total : u.done ? 1 : 0}
                  label={u.error ? "failed" : u.done ? `uploaded, ${bytes(u.total)}` : `${bytes(u.sent)} of ${bytes(u.total)}`}
                />
                <ErrorBox error={u.error} title="Upload refused:" />
              </li>
            ))}
          </ul>
        ) : null}
      </Card>
      <Card
        title="Stored files"
        actions={
          <div class="row">
            <input
              aria-label="Show only keys starting with"
              placeholder="filter: keys starting with…"
              value={prefix}
              onInput={(e) => setPrefix(e.currentTarget.value)}
            />
            <button type="button" class="plain" onClick={reload}>
              Refresh
            </button>
          </div>
        }
      >
        <ErrorBox error={error} />
        {objects === null ? (
          <Loading what="your files" />
        ) : objects.length === 0 ? (
          <Empty>No files {prefix ? `starting with “${prefix}”` : "yet: upload some above"}.</Empty>
        ) : (
          <TableWrap>
          <table data-testid="objects">
            <thead>
              <tr>
                <th>Key</th>
                <th class="num">Size</th>
                <th>Digest</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {objects.map((o) => (
                <Row client={client} obj={o} onDeleted={reload} />
              ))}
            </tbody>
          </table>
          </TableWrap>
        )}
      </Card>
    </>
  );
}
