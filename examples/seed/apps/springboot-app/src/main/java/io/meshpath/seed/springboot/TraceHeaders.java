package io.meshpath.seed.springboot;

import jakarta.servlet.http.HttpServletRequest;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The request headers the seed asks every service to copy from its incoming request to each
 * outgoing one, so the mesh's spans join into one trace (B3 multi- and single-header, Envoy's
 * request id and the OpenTracing span context).
 */
final class TraceHeaders {
    static final List<String> NAMES = List.of(
            "x-request-id",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
            "x-ot-span-context",
            "b3");

    private TraceHeaders() {}

    /** The trace headers present on {@code request}, in {@link #NAMES} order. */
    static Map<String, String> of(HttpServletRequest request) {
        Map<String, String> seen = new LinkedHashMap<>();
        for (String name : NAMES) {
            String value = request.getHeader(name);
            if (value != null) {
                seen.put(name, value);
            }
        }
        return seen;
    }

    /** One JSON line for stdout: which app saw which trace headers on which request. */
    static String logLine(String app, HttpServletRequest request, Map<String, String> seen) {
        StringBuilder b = new StringBuilder("{\"app\":").append(quote(app))
                .append(",\"method\":").append(quote(request.getMethod()))
                .append(",\"path\":").append(quote(request.getRequestURI()))
                .append(",\"trace\":{");
        boolean first = true;
        for (Map.Entry<String, String> e : seen.entrySet()) {
            if (!first) {
                b.append(',');
            }
            first = false;
            b.append(quote(e.getKey())).append(':').append(quote(e.getValue()));
        }
        return b.append("}}").toString();
    }

    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
