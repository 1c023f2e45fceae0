// Package redact keeps the queries of storage URLs, which may carry an
// endpoint's token (a SAS token, a presigned signature), out of logs,
// messages and workflow histories.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// URL drops url's query but for the bucket options that say where it
// points and are no secret (prefix=, endpoint=, region=, an emulator's
// domain=, …), as the user wrote them: a bucket shown without its prefix
// or endpoint is another bucket.
func URL(u string) string {
	i := strings.IndexByte(u, '?')
	if i < 0 {
		return u
	}
	var kept []string
	for _, param := range strings.Split(u[i+1:], "&") {
		k, v, _ := strings.Cut(param, "=")
		k, err1 := url.QueryUnescape(k)
		v, err2 := url.QueryUnescape(v)
		// No user:password@ in an endpoint, no query of its own, and no
		// ";", which Go's query parsing drops with the pair, so that
		// domain=x;sig=… would read as kept.
		if err1 == nil && err2 == nil && shown[k] && !strings.ContainsAny(v, "@?") && !strings.Contains(param, ";") {
			kept = append(kept, param)
		}
	}
	if len(kept) == 0 {
		return u[:i]
	}
	return u[:i] + "?" + strings.Join(kept, "&")
}

// shown are the bucket URL options URL keeps: those of gocloud's drivers
// and DCD's prefix= that say which bucket, none of which holds a secret.
var shown = map[string]bool{
	"prefix": true, "region": true, "endpoint": true, "use_path_style": true, "s3ForcePathStyle": true, "disable_https": true,
	"profile": true, "accelerate": true, "dualstack": true, "fips": true, "hostname_immutable": true,
	"domain": true, "protocol": true, "localemu": true, "cdn": true, "storage_account": true, "universe_domain": true,
}

// Text drops the query of every URL in s (a scheme's "://", up to a space
// or a quote): a command line, or an error that quotes the URL it failed
// on.
func Text(s string) string { return urlQuery.ReplaceAllString(s, "$1") }

// Schemes are case-insensitive: url.Parse, and so store.Open, take S3://.
var urlQuery = regexp.MustCompile(`(?i)([a-z0-9+.-]+://[^\s?"]*)\?[^\s"]*`)
