// A small reader for the flat JSON configurations the fixtures take:
// an object whose values are strings or arrays of strings. Any other
// shape, or a value of the wrong kind, is an error (`ok` false).

export class JsonConfig {
  ok: bool = true;
  error: string = "";
  keys: Array<string> = [];
  strings: Map<string, string> = new Map();
  lists: Map<string, Array<string>> = new Map();
}

class Reader {
  text: string;
  at: i32 = 0;
  constructor(text: string) {
    this.text = text;
  }
  skip(): void {
    while (this.at < this.text.length) {
      const c = this.text.charCodeAt(this.at);
      if (c != 32 && c != 9 && c != 10 && c != 13) break;
      this.at++;
    }
  }
  peek(): i32 {
    this.skip();
    return this.at < this.text.length ? this.text.charCodeAt(this.at) : -1;
  }
  eat(c: i32): bool {
    if (this.peek() != c) return false;
    this.at++;
    return true;
  }
  str(): string | null {
    if (!this.eat(34)) return null;
    let out = "";
    while (this.at < this.text.length) {
      const c = this.text.charCodeAt(this.at++);
      if (c == 34) return out;
      if (c == 92) {
        if (this.at >= this.text.length) return null;
        const e = this.text.charCodeAt(this.at++);
        if (e == 110) out += "\n";
        else if (e == 116) out += "\t";
        else out += String.fromCharCode(e);
      } else {
        out += String.fromCharCode(c);
      }
    }
    return null;
  }
}

export function parseConfig(text: string): JsonConfig {
  const cfg = new JsonConfig();
  const r = new Reader(text);
  if (!r.eat(123)) {
    cfg.ok = false;
    cfg.error = "expected a JSON object";
    return cfg;
  }
  if (r.eat(125)) return cfg;
  while (true) {
    const key = r.str();
    if (key === null || !r.eat(58)) {
      cfg.ok = false;
      cfg.error = "expected a quoted key and a colon";
      return cfg;
    }
    const k = key as string;
    cfg.keys.push(k);
    if (r.peek() == 91) {
      r.eat(91);
      const list: Array<string> = [];
      if (!r.eat(93)) {
        while (true) {
          const item = r.str();
          if (item === null) {
            cfg.ok = false;
            cfg.error = "`" + k + "` must be an array of strings";
            return cfg;
          }
          list.push(item as string);
          if (r.eat(93)) break;
          if (!r.eat(44)) {
            cfg.ok = false;
            cfg.error = "expected `,` or `]` in `" + k + "`";
            return cfg;
          }
        }
      }
      cfg.lists.set(k, list);
    } else {
      const v = r.str();
      if (v === null) {
        cfg.ok = false;
        cfg.error = "`" + k + "` must be a string";
        return cfg;
      }
      cfg.strings.set(k, v as string);
    }
    if (r.eat(125)) break;
    if (!r.eat(44)) {
      cfg.ok = false;
      cfg.error = "expected `,` or `}`";
      return cfg;
    }
  }
  if (r.peek() != -1) {
    cfg.ok = false;
    cfg.error = "trailing characters after the object";
  }
  return cfg;
}

// Only these keys may appear (the Rust twins refuse unknown fields).
export function unknownKey(cfg: JsonConfig, allowed: Array<string>): string | null {
  for (let i = 0; i < cfg.keys.length; i++) {
    if (!allowed.includes(cfg.keys[i])) return cfg.keys[i];
  }
  return null;
}
