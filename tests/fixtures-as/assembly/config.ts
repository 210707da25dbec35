// AssemblyScript twin of the Rust `fixture-config` (tests/fixtures/config):
// a JSON plugin configuration, refused when missing or invalid. (The Rust
// twin also copies two environment variables; AssemblyScript's runtime
// has no environment, and the waypoint gives the Rust twin none.)
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  send_local_response, log, LogLevelValues, GrpcStatusValues,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";
import { parseConfig, unknownKey } from "./lib/json";

class Root extends RootContext {
  header: string = "";
  value: string = "";
  denyPaths: Array<string> = [];

  onConfigure(configuration_size: u32): bool {
    // Not `super.onConfigure`: proxy-runtime 0.1.8 passes the size where
    // the size's out-pointer belongs there.
    const text = String.UTF8.decode(
      get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    if (text.trim() == "") {
      log(LogLevelValues.error,
        "fixture-config: plugin configuration is missing; expected JSON {\"header\", \"value\", \"deny_paths\"}");
      return false;
    }
    const cfg = parseConfig(text);
    const unknown = unknownKey(cfg, ["header", "value", "deny_paths"]);
    if (!cfg.ok || unknown !== null || !cfg.strings.has("header") || !cfg.strings.has("value")
      || !cfg.lists.has("deny_paths")) {
      log(LogLevelValues.error, "fixture-config: invalid plugin configuration: " +
        (!cfg.ok ? cfg.error : unknown !== null ? "unknown field `" + (unknown as string) + "`"
          : "`header`, `value` and `deny_paths` are required"));
      return false;
    }
    this.header = cfg.strings.get("header");
    this.value = cfg.strings.get("value");
    this.denyPaths = cfg.lists.get("deny_paths");
    return true;
  }

  createContext(context_id: u32): Context {
    return new Filter(context_id, this);
  }
}

class Filter extends Context {
  constructor(context_id: u32, root_context: Root) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as Root;
    const req = stream_context.headers.request;
    req.add(root.header, root.value);
    const path = req.get(":path");
    for (let i = 0; i < root.denyPaths.length; i++) {
      if (path.startsWith(root.denyPaths[i])) {
        send_local_response(403, "", String.UTF8.encode("path denied by fixture-config"), [],
          GrpcStatusValues.InvalidCode);
        return FilterHeadersStatusValues.StopIteration;
      }
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new Root(context_id); }, "");
registerRootContext((context_id: u32) => { return new Root(context_id); }, "as-config");
