// `npm run build` writes web/dist, which the API serves at / (api/app.py).
// `npm run dev` serves the UI with hot reload and forwards the API to a running `gpgpu up`.
import { defineConfig } from "vite";

const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env;
const api = env?.GPGPU_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", sourcemap: false },
  server: {
    proxy: {
      "/graphql": { target: api, ws: true },
      "/storage": api,
      "/healthz": api,
      "/downloads": api,
    },
  },
});
