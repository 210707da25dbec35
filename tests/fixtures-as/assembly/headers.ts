// AssemblyScript twin of the Rust `fixture-headers` (tests/fixtures/headers):
// the same header rewrites, local reply and property reads.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  send_local_response, log, LogLevelValues, GrpcStatusValues, HeaderPair, Headers,
} from "@solo-io/proxy-runtime";
import { get_property } from "@solo-io/proxy-runtime/runtime";

class Root extends RootContext {
  createContext(context_id: u32): Context {
    return new HeadersFilter(context_id, this);
  }
}

function header(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function propertyText(path: string): string {
  const bytes = get_property(path);
  return bytes.byteLength == 0 ? "missing" : String.UTF8.decode(bytes);
}

class HeadersFilter extends Context {
  constructor(context_id: u32, root_context: Root) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const req = stream_context.headers.request;
    log(LogLevelValues.info, "fixture-headers: " + req.get(":method") + " " + req.get(":path"));
    if (req.get("x-deny") != "") {
      const extra: Headers = [header("x-denied-by", "fixture-headers")];
      send_local_response(403, "", String.UTF8.encode("denied by fixture-headers"), extra,
        GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    const seen = req.get_headers().length;
    req.replace("x-seen-headers", seen.toString());
    req.add("x-fixture-headers", "seen");
    if (req.get("x-replace-me") != "") {
      req.replace("x-replace-me", "replaced");
    }
    req.remove("x-remove-me");
    req.replace("x-wayplug-namespace", propertyText("wayplug\0namespace"));
    req.replace("x-plugin-name", propertyText("plugin_name"));
    req.replace("x-request-path", propertyText("request\0path"));
    req.replace("x-source-address", propertyText("source\0address"));
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-fixture-response", "ok");
    stream_context.headers.response.remove("x-upstream-secret");
    return FilterHeadersStatusValues.Continue;
  }
}

// The root id is the plugin entry's `pluginName`: empty unless set.
registerRootContext((context_id: u32) => { return new Root(context_id); }, "");
registerRootContext((context_id: u32) => { return new Root(context_id); }, "as-headers");
