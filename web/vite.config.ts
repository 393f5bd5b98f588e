// Builds the dashboard into dist/, which `lion` embeds (crates/agentic_http/build.rs).
import { defineConfig } from "vite";

export default defineConfig({
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    // One script and one stylesheet: the page loads in one round trip more.
    modulePreload: false,
    reportCompressedSize: false,
  },
});
