// AssemblyScript twin of the Rust `fixture-callout` (tests/fixtures/callout):
// an HTTP callout that gates each request.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, BaseContext, registerRootContext, FilterHeadersStatusValues,
  stream_context, send_local_response, continue_request, log, LogLevelValues,
  GrpcStatusValues, HeaderPair, Headers, WasmResultValues,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";
import { parseConfig, unknownKey } from "./lib/json";

class Root extends RootContext {
  upstream: string = "auth";

  onConfigure(configuration_size: u32): bool {
    // Not `super.onConfigure`: proxy-runtime 0.1.8 passes the size where
    // the size's out-pointer belongs there.
    const text = String.UTF8.decode(
      get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    if (text.trim() == "") return true;
    const cfg = parseConfig(text);
    const unknown = unknownKey(cfg, ["upstream"]);
    if (!cfg.ok || unknown !== null) {
      log(LogLevelValues.error, "fixture-callout: invalid plugin configuration: " +
        (cfg.ok ? "unknown field `" + (unknown as string) + "`" : cfg.error));
      return false;
    }
    if (cfg.strings.has("upstream")) this.upstream = cfg.strings.get("upstream");
    return true;
  }

  createContext(context_id: u32): Context {
    return new Callout(context_id, this);
  }
}

function header(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function onAnswer(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  const status = stream_context.headers.http_callback.get(":status");
  if (status == "200") {
    const body = get_buffer_bytes(BufferTypeValues.HttpCallResponseBody, 0, body_size as u32);
    stream_context.headers.request.add("x-auth-result", String.UTF8.decode(body));
    continue_request();
  } else {
    const shown = status == "" ? "missing" : status;
    send_local_response(403, "", String.UTF8.encode("callout denied: " + shown), [],
      GrpcStatusValues.InvalidCode);
  }
}

class Callout extends Context {
  constructor(context_id: u32, root_context: Root) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as Root;
    const path = stream_context.headers.request.get(":path");
    const headers: Headers = [
      header(":method", "GET"), header(":path", "/check"), header(":authority", "auth.local"),
      header("x-original-path", path),
    ];
    const result = root.httpCall(root.upstream, headers, new ArrayBuffer(0), [], 5000,
      this as BaseContext, onAnswer);
    if (result != WasmResultValues.Ok) {
      log(LogLevelValues.warn, "fixture-callout: dispatch to " + root.upstream + " failed: " +
        result.toString());
      send_local_response(500, "", String.UTF8.encode("callout dispatch failed"), [],
        GrpcStatusValues.InvalidCode);
    }
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => { return new Root(context_id); }, "");
registerRootContext((context_id: u32) => { return new Root(context_id); }, "as-callout");
