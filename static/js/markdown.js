// Markdown to safe DOM, for the model's replies (never for what people type).
//
// Model output is untrusted: it may hold anything a prompt talked it into.
// Three layers keep it inert. markdown-it runs with html:false, so raw HTML in
// the text is escaped, not rendered; its link check accepts only http(s),
// mailto and relative links; and its HTML output passes DOMPurify, with a
// short allowlist of tags and attributes, before it becomes DOM. The
// fragment DOMPurify returns never went through innerHTML on the live page.

import MarkdownIt from "../vendor/markdown-it/markdown-it.esm.min.js";
import DOMPurify from "../vendor/dompurify/purify.es.js";
import hljs from "../vendor/highlightjs/highlight.min.js";

// A scheme, judged as a browser would: browsers drop ASCII tabs and newlines
// anywhere in a URL and leading control characters and spaces, so
// "jav\tascript:" is javascript:. markdown-it hands links over
// percent-encoded ("jav%09ascript:"), so they are decoded first.
const SCHEME = /^([a-z][a-z0-9+.-]*):/i;
const SAFE_SCHEMES = new Set(["http", "https", "mailto"]);
const INVISIBLE = /[\u0000-\u0020\u007f-\u009f\u00ad\u200b-\u200f\u2028\u2029\ufeff]/g;

/**
 * Whether `url` may become a link: http, https, mailto, or no scheme at all
 * (relative, #fragment). javascript:, data:, vbscript:, file: and every other
 * scheme are refused, however spelled (case, entities, percent-encoding,
 * tabs, control characters).
 */
export function isSafeUrl(url) {
  let text = String(url);
  try {
    text = decodeURIComponent(text);
  } catch {
    // Not valid percent-encoding: judge it as written.
  }
  const match = SCHEME.exec(text.replace(INVISIBLE, ""));
  return !match || SAFE_SCHEMES.has(match[1].toLowerCase());
}

// The last highlighted code blocks: while a reply streams, every frame
// renders it whole, and its finished code blocks need not be highlighted again.
const highlighted = new Map();
const HIGHLIGHT_CACHE = 32;

function highlight(code, language) {
  // Only a named, known language: guessing (highlightAuto) on every frame of
  // a streamed reply costs too much and guesses wrong on short snippets.
  if (!language || !hljs.getLanguage(language)) return "";
  const key = `${language}\n${code}`;
  let html = highlighted.get(key);
  if (html === undefined) {
    try {
      html = hljs.highlight(code, { language, ignoreIllegals: true }).value;
    } catch {
      html = ""; // markdown-it escapes the code itself
    }
    if (highlighted.size >= HIGHLIGHT_CACHE) highlighted.delete(highlighted.keys().next().value);
  }
  highlighted.delete(key); // to the end: most recently used
  highlighted.set(key, html);
  return html;
}

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, highlight });
md.validateLink = isSafeUrl;
// An image in a reply would make every reader's browser fetch a URL the model
// chose; `![alt](url)` shows as "!" and a link instead.
md.disable("image");
// Code blocks carry the `hljs` class for the theme, highlighted or not.
md.renderer.rules.fence = ((fence) => (tokens, index, options, env, self) => {
  tokens[index].attrJoin("class", "hljs");
  return fence(tokens, index, options, env, self);
})(md.renderer.rules.fence);
// Table alignment as a class, so that no style attribute needs allowing.
md.core.ruler.push("align_class", (state) => {
  for (const token of state.tokens) {
    const style = token.attrGet && token.attrGet("style");
    if (!style) continue;
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    const align = /text-align:(left|right|center)/.exec(style);
    if (align) token.attrJoin("class", `align-${align[1]}`);
  }
});

const PURIFY = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol",
    "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "start"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName !== "A") return;
  const href = node.getAttribute("href");
  if (href === null || !isSafeUrl(href)) {
    node.removeAttribute("href");
    return;
  }
  node.setAttribute("target", "_blank");
  node.setAttribute("rel", "noopener noreferrer");
});

/**
 * Render Markdown `text` (a reply, whole or as far as it has streamed) to a
 * sanitised DocumentFragment: paragraphs, lists, tables, links, inline code
 * and fenced code blocks (`pre > code.hljs`, highlighted when the fence names
 * a known language). Never throws on any input.
 */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text), PURIFY);
}
