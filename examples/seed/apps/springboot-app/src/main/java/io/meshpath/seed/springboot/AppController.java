package io.meshpath.seed.springboot;

import jakarta.servlet.http.HttpServletRequest;
import java.util.Map;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.http.MediaType;
import org.springframework.http.ResponseEntity;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;
import org.springframework.web.client.RestClient;
import org.springframework.web.client.RestClientException;

/**
 * {@code GET /}: v1 answers a fixed line, v2 asks golang-app-data for its configuration and wraps
 * it. Both end the body with a newline: the seed's curl of springboot-app-svc shows
 * {@code content-length: 136} for the 135 visible characters of the v2 answer.
 */
@RestController
public class AppController {
    private static final String APP = "springboot-app";

    private final String version;
    private final String dataUrl;
    private final RestClient client;

    public AppController(@Value("${app.version}") String version,
                         @Value("${app.data-url}") String dataUrl) {
        this.version = version.trim().toLowerCase();
        if (!this.version.equals("v1") && !this.version.equals("v2")) {
            throw new IllegalArgumentException("APP_VERSION must be v1 or v2, not " + version);
        }
        this.dataUrl = dataUrl.endsWith("/") ? dataUrl : dataUrl + "/";
        this.client = RestClient.create();
    }

    @GetMapping(value = "/", produces = MediaType.TEXT_PLAIN_VALUE)
    public ResponseEntity<String> root(HttpServletRequest request) {
        Map<String, String> trace = TraceHeaders.of(request);
        System.out.println(TraceHeaders.logLine(APP + "-" + version, request, trace));
        if (version.equals("v1")) {
            return ResponseEntity.ok("response from: springboot app V1\n");
        }
        String data;
        try {
            data = client.get()
                    .uri(dataUrl)
                    .headers(h -> trace.forEach(h::set))
                    .retrieve()
                    .body(String.class);
        } catch (RestClientException e) {
            // The mesh, not the app, decides retries; the caller sees the failure.
            return ResponseEntity.status(502)
                    .body("springboot app V2: golang-app-data failed: " + e.getMessage() + "\n");
        }
        return ResponseEntity.ok("response from: springboot app V2, args: <data from golang-app-data: ["
                + (data == null ? "" : data) + "] >\n");
    }
}
