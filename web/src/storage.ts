// The client's storage space over plain HTTP: /storage/{client}/{key}.
import { authHeaders, session } from "./session";

export interface StoredObject {
  key: string;
  size: number;
  digest: string;
}

function url(client: string, key = ""): string {
  const path = key.split("/").map(encodeURIComponent).join("/");
  return `/storage/${encodeURIComponent(client)}${key ? `/${path}` : ""}`;
}

/** The API's refusal in its own words: FastAPI sends {"detail": "..."}. */
async function refusal(r: Response): Promise<Error> {
  let text = `${r.status} ${r.statusText}`;
  try {
    const body = (await r.json()) as { detail?: unknown };
    if (body.detail) text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    /* not JSON: keep the status line */
  }
  return new Error(text);
}

export async function listObjects(client: string, prefix = ""): Promise<StoredObject[]> {
  const r = await fetch(`${url(client)}?prefix=${encodeURIComponent(prefix)}`, {
    headers: authHeaders(session.value),
  });
  if (!r.ok) throw await refusal(r);
  return (await r.json()) as StoredObject[];
}

export async function deleteObject(client: string, key: string): Promise<void> {
  const r = await fetch(url(client, key), { method: "DELETE", headers: authHeaders(session.value) });
  if (!r.ok) throw await refusal(r);
}

/** Fetch an object and hand it to the browser as a download named after the key's last part. */
export async function downloadObject(client: string, key: string): Promise<void> {
  const r = await fetch(url(client, key), { headers: authHeaders(session.value) });
  if (!r.ok) throw await refusal(r);
  const blob = await r.blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = key.split("/").pop() || "download";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
}

/** PUT a file with XHR, which reports upload progress (fetch does not). */
export function uploadObject(
  client: string,
  key: string,
  file: Blob,
  onProgress: (sent: number, total: number) => void,
): { done: Promise<StoredObject>; abort: () => void } {
  const xhr = new XMLHttpRequest();
  const done = new Promise<StoredObject>((resolve, reject) => {
    xhr.open("PUT", url(client, key));
    for (const [name, value] of Object.entries(authHeaders(session.value))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(file.size, file.size);
        resolve(JSON.parse(xhr.responseText) as StoredObject);
        return;
      }
      let text = `${xhr.status} ${xhr.statusText}`;
      try {
        const body = JSON.parse(xhr.responseText) as { detail?: unknown };
        if (body.detail) text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch {
        /* keep the status line */
      }
      reject(new Error(text));
    };
    xhr.onerror = () => reject(new Error("The upload was interrupted: could not reach the network"));
    xhr.onabort = () => reject(new Error("Upload cancelled"));
    xhr.send(file);
  });
  return { done, abort: () => xhr.abort() };
}
