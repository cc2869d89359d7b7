// Read-aloud through /v1/audio/speech with one player for the page. The answer is spoken sentence by sentence
// as it streams: each group of finished sentences is one request, its MP3 appended to a MediaSource as it
// arrives, so the voice starts on the first sentence; a Blob of the whole answer where MediaSource cannot
// play MP3.

const MIME = "audio/mpeg";
const MAX_INPUT = 4000; // the server takes 1–4096 characters per request

/** Whether this browser can play MP3 while it downloads. */
export function canStream() {
  return typeof MediaSource !== "undefined" && MediaSource.isTypeSupported(MIME);
}

/** Split text into pieces the server accepts, at sentence ends where possible. */
export function splitText(text, limit = MAX_INPUT) {
  const pieces = [];
  let rest = text.trim();
  while (rest.length > limit) {
    const window = rest.slice(0, limit);
    let cut = Math.max(window.lastIndexOf(". "), window.lastIndexOf("! "), window.lastIndexOf("? "), window.lastIndexOf("\n"));
    if (cut < limit / 2) cut = window.lastIndexOf(" ");
    if (cut <= 0) cut = limit - 1;
    pieces.push(rest.slice(0, cut + 1).trim());
    rest = rest.slice(cut + 1).trim();
  }
  if (rest) pieces.push(rest);
  return pieces;
}

function settle(target, ok, ...failures) {
  return new Promise((resolve, reject) => {
    const done = (handler) => (event) => {
      target.removeEventListener(ok, onOk);
      for (const f of failures) target.removeEventListener(f, onFail);
      handler(event);
    };
    const onOk = done(resolve);
    const onFail = done(() => reject(new Error(`audio ${failures.join("/")}`)));
    target.addEventListener(ok, onOk);
    for (const f of failures) target.addEventListener(f, onFail);
  });
}

function startPlaying(audio) {
  // Autoplay may be refused (no user gesture yet): the audio's own controls still play it.
  audio.play().catch(() => {});
}

const ABBREVIATIONS = /\b(?:e\.g|i\.e|etc|vs|mr|mrs|ms|dr|prof|st|no|fig|approx)\.$/i;

/** Sentences of one line of text (a light splitter: ends at . ! ? … before a space and a capital or digit). */
export function splitSentences(text) {
  const out = [];
  for (const line of text.split(/\n+/)) {
    let start = 0;
    const ends = /[.!?…]+["'”’)\]]*\s+(?=["'“‘(\[]?[\p{Lu}\p{N}])/gu;
    let match;
    while ((match = ends.exec(line))) {
      const candidate = line.slice(start, match.index + match[0].length).trim();
      if (ABBREVIATIONS.test(candidate.replace(/["'”’)\]]*$/, ""))) continue;
      if (candidate) out.push(candidate);
      start = match.index + match[0].length;
    }
    const rest = line.slice(start).trim();
    if (rest) out.push(rest);
  }
  return out;
}

/**
 * The sentences of speakable blocks that will not change any more: all of them once the answer is final,
 * else all but the last sentence of the last block (it may still be growing).
 */
export function finishedSentences(blocks, final) {
  const sentences = [];
  blocks.forEach((block, i) => {
    const parts = splitSentences(block);
    if (!final && i === blocks.length - 1) parts.pop();
    sentences.push(...parts);
  });
  return sentences;
}

async function* responseChunks(response) {
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (value.byteLength) yield value;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * One read-aloud at a time for the whole page, through one <audio> element.
 * `onChange({messageId, phase})` reports "preparing" (waiting for the first audio, or for more of it),
 * "playing", "paused" and "idle".
 */
export class ReadAloud {
  constructor(api, audio, onChange) {
    this.api = api;
    this.audio = audio;
    this.onChange = onChange;
    this.session = null;
    this.rate = 1;
    for (const [event, phase] of [
      ["playing", "playing"],
      ["waiting", "preparing"],
      ["pause", "paused"],
    ]) {
      audio.addEventListener(event, () => {
        if (this.session && !(phase === "paused" && audio.ended)) this.setPhase(phase);
      });
    }
    audio.addEventListener("ended", () => {
      if (this.session?.done) this.stop();
    });
    audio.addEventListener("ratechange", () => {
      // The browser resets the rate on each new source: keep the chosen one.
      if (audio.playbackRate !== this.rate) audio.playbackRate = this.rate;
    });
  }

  get messageId() {
    return this.session?.messageId ?? null;
  }

  setPhase(phase) {
    if (!this.session) return;
    this.session.phase = phase;
    this.onChange({ messageId: this.session.messageId, phase });
  }

  setRate(rate) {
    this.rate = rate;
    this.audio.defaultPlaybackRate = rate;
    this.audio.playbackRate = rate;
  }

  /** Start reading a message (stopping any other); feed() gives it the answer's speakable blocks. */
  start(messageId, voice) {
    this.stop();
    const session = {
      messageId,
      voice,
      controller: new AbortController(),
      sentences: [],
      sent: 0,
      final: false,
      done: false,
      wake: null,
      phase: "preparing",
    };
    this.session = session;
    this.setPhase("preparing");
    const run = canStream() ? this.streamed(session) : this.buffered(session);
    run.catch((error) => {
      if (this.session !== session) return;
      this.stop();
      if (error.name !== "AbortError") this.onChange({ messageId, phase: "idle", error });
    });
  }

  /** The answer's speakable blocks so far; `final` once it is complete. */
  feed(blocks, final) {
    const session = this.session;
    if (!session) return;
    const sentences = finishedSentences(blocks, final);
    // Sentences already sent stay as they were; only new ones are added.
    if (sentences.length > session.sentences.length) session.sentences = sentences;
    session.final = final;
    session.wake?.();
  }

  stop() {
    const session = this.session;
    if (!session) return;
    this.session = null;
    session.controller.abort();
    session.wake?.();
    this.audio.pause();
    this.onChange({ messageId: session.messageId, phase: "idle" });
  }

  /** The next group of finished sentences, waiting for more; null once everything is sent. */
  async nextText(session, first) {
    for (;;) {
      if (session.controller.signal.aborted) throw new DOMException("Aborted", "AbortError");
      const fresh = session.sentences.slice(session.sent);
      if (fresh.length) {
        // The first request holds one sentence, so the voice starts soon; later ones take all that is ready.
        const take = [];
        let size = 0;
        for (const sentence of fresh) {
          if (take.length && (first || size + sentence.length > MAX_INPUT)) break;
          take.push(sentence.slice(0, MAX_INPUT));
          size += sentence.length + 1;
        }
        session.sent += take.length;
        return take.join(" ");
      }
      if (session.final) return null;
      await new Promise((resolve) => {
        session.wake = resolve;
      });
      session.wake = null;
    }
  }

  async request(session, input) {
    const [model, voice] = session.voice;
    return this.api.request("v1/audio/speech", {
      method: "POST",
      body: { model, voice, input, response_format: "mp3" },
      signal: session.controller.signal,
    });
  }

  async streamed(session) {
    const audio = this.audio;
    if (audio.src.startsWith("blob:")) URL.revokeObjectURL(audio.src);
    const source = new MediaSource();
    audio.src = URL.createObjectURL(source);
    audio.playbackRate = this.rate;
    await settle(source, "sourceopen");
    const buffer = source.addSourceBuffer(MIME);
    buffer.mode = "sequence"; // each request's audio plays after the previous one
    let started = false;
    for (let text = await this.nextText(session, true); text !== null; text = await this.nextText(session, false)) {
      for await (const chunk of responseChunks(await this.request(session, text))) {
        if (this.session !== session) return;
        buffer.appendBuffer(chunk);
        await settle(buffer, "updateend", "error", "abort");
        if (!started) {
          started = true;
          startPlaying(audio);
        }
      }
    }
    session.done = true;
    if (source.readyState === "open" && !buffer.updating) source.endOfStream();
    if (!started) this.stop(); // nothing to say
  }

  async buffered(session) {
    const parts = [];
    for (let text = await this.nextText(session, false); text !== null; text = await this.nextText(session, false)) {
      for await (const chunk of responseChunks(await this.request(session, text))) parts.push(chunk);
    }
    if (this.session !== session) return;
    session.done = true;
    if (!parts.length) {
      this.stop();
      return;
    }
    if (this.audio.src.startsWith("blob:")) URL.revokeObjectURL(this.audio.src);
    this.audio.src = URL.createObjectURL(new Blob(parts, { type: MIME }));
    this.audio.playbackRate = this.rate;
    startPlaying(this.audio);
  }
}
