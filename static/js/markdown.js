// Model output is untrusted: Markdown goes through marked, then DOMPurify, and only then into the page.

import { marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.js";
import hljs from "../vendor/highlight/highlight.min.js";
import katex from "../vendor/katex/katex.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const MAX_HIGHLIGHT = 20_000; // characters of one code block; longer ones stay plain

/** TeX as MathML (the browser draws it: no fonts, no inline styles for the CSP to refuse). */
function math(tex, displayMode) {
  const mathml = katex.renderToString(tex, { displayMode, output: "mathml", throwOnError: false, trust: false });
  // The TeX source inside <annotation> is not MathML Core: the sanitizer would leave it as visible text.
  return mathml.replace(/<annotation\b[\s\S]*?<\/annotation>/g, "");
}

// Math is taken out before Markdown sees it (which would turn `\,` into `,` and `a_1_` into emphasis).
// `$…$` follows Pandoc: no space inside the dollars and no digit after the closing one, so "$5 and $10" is text.
const mathExtensions = [
  {
    name: "blockMath",
    level: "block",
    start: (src) => src.match(/^ {0,3}(\$\$|\\\[)/m)?.index,
    tokenizer(src) {
      const match = /^ {0,3}(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n|$)/.exec(src);
      if (match) return { type: "blockMath", raw: match[0], tex: (match[1] ?? match[2]).trim() };
      return undefined;
    },
    renderer: (token) => `<p>${math(token.tex, true)}</p>\n`,
  },
  {
    name: "inlineMath",
    level: "inline",
    start: (src) => src.match(/\$|\\\(/)?.index,
    tokenizer(src) {
      const match =
        /^\$\$([^$]+?)\$\$/.exec(src) ??
        /^\$(?=\S)((?:[^$\\\n]|\\.)+?)(?<=\S)\$(?!\d)/.exec(src) ??
        /^\\\(([\s\S]+?)\\\)/.exec(src);
      if (match) return { type: "inlineMath", raw: match[0], tex: match[1], display: src.startsWith("$$") };
      return undefined;
    },
    renderer: (token) => math(token.tex, token.display),
  },
];

marked.use({ extensions: mathExtensions });
marked.use({
  gfm: true,
  breaks: false,
  renderer: {
    // Pictures named by a model would be fetched from anywhere: show them as links instead.
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
    checkbox({ checked }) {
      return checked ? "☑ " : "☐ ";
    },
  },
});

const PURIFY = {
  USE_PROFILES: { html: true, mathMl: true },
  FORBID_TAGS: [
    "img", "picture", "video", "audio", "source", "track", "iframe", "frame", "object", "embed",
    "style", "link", "meta", "base", "form", "input", "button", "textarea", "select", "option", "dialog",
  ],
  FORBID_ATTR: ["style", "class", "id", "tabindex", "autofocus"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// marked gives fenced code a language-* class; keep it (classes are otherwise forbidden).
DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class" && node.tagName === "CODE" && /^language-[\w+#.-]{1,32}$/.test(data.attrValue)) {
    data.forceKeepAttr = true;
  }
});

const HIGHLIGHTED = { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"], RETURN_DOM_FRAGMENT: true };

/** Colour a code block's tokens (highlight.js escapes the text; its spans are sanitized again all the same). */
function highlight(code, language) {
  if (!code || !language || !hljs.getLanguage(language) || code.textContent.length > MAX_HIGHLIGHT) return;
  const { value } = hljs.highlight(code.textContent, { language, ignoreIllegals: true });
  code.replaceChildren(DOMPurify.sanitize(value, HIGHLIGHTED));
  code.classList.add("hljs");
}

/** A sanitized DocumentFragment of the Markdown text, code blocks wrapped with a language label and copy button. */
export function renderMarkdown(text) {
  const html = marked.parse(text, { async: false });
  const fragment = DOMPurify.sanitize(html, PURIFY);
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const language = code?.className.match(/language-([\w+#.-]+)/)?.[1] ?? "";
    const block = document.createElement("div");
    block.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const label = document.createElement("span");
    label.textContent = language || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "btn btn-small btn-ghost copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy ${language || ""} code`.replace("  ", " "));
    bar.append(label, copy);
    pre.replaceWith(block);
    block.append(bar, pre);
    highlight(code, language);
  }
  // Wide tables scroll sideways in their own box instead of squeezing words apart.
  for (const table of fragment.querySelectorAll("table")) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.tabIndex = 0;
    wrap.setAttribute("role", "region");
    wrap.setAttribute("aria-label", "Table (scrolls sideways)");
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}

const TERMINAL = /[.!?…:;]["'”’)\]]*$/;

function clean(text) {
  return text.replace(/\s+/g, " ").trim();
}

/**
 * The answer as blocks of speakable text: each paragraph, heading, list item and table row its own block
 * (ending in a full stop, so the voice pauses), table cells separated by commas, code blocks announced only.
 */
export function speakableBlocks(root) {
  const blocks = [];
  const push = (text) => {
    const line = clean(text);
    if (line) blocks.push(TERMINAL.test(line) ? line : `${line}.`);
  };
  const walk = (node) => {
    let inline = "";
    const flush = () => {
      push(inline);
      inline = "";
    };
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        inline += child.textContent;
        continue;
      }
      if (child.nodeType !== Node.ELEMENT_NODE) continue;
      const tag = child.tagName;
      if (child.classList.contains("code-block") || tag === "PRE") {
        flush();
        const language = child.querySelector(".code-bar span")?.textContent;
        const named = language && language !== "code";
        blocks.push(named ? `A ${language} code block, not read.` : "A code block, not read.");
      } else if (tag === "TR") {
        flush();
        push([...child.children].map((cell) => clean(cell.textContent)).filter(Boolean).join(", "));
      } else if (tag === "HR" || tag === "BR") {
        flush();
      } else if (/^(P|H[1-6]|LI|DT|DD|BLOCKQUOTE|UL|OL|TABLE|THEAD|TBODY|DIV|DETAILS|SECTION)$/.test(tag)) {
        flush();
        walk(child);
      } else {
        inline += child.textContent;
      }
    }
    flush();
  };
  const copy = root.cloneNode(true);
  for (const formula of copy.querySelectorAll("math")) formula.replaceWith(" a formula ");
  walk(copy);
  return blocks;
}

/** The text worth reading aloud from a rendered answer: blocks on their own lines, code announced only. */
export function speakableText(root) {
  return speakableBlocks(root).join("\n");
}
