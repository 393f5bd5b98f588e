// Preact with htm: components written as tagged templates, no JSX step.
import { h } from "preact";
import htm from "htm";

/** Builds Preact elements from a template. */
export const html = htm.bind(h);
