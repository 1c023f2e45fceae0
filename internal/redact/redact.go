// Package redact keeps the secrets URLs may carry (an endpoint's token in
// a query: a SAS token, a presigned signature; a user and password before
// the host; a fragment) out of logs, messages and workflow histories.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// URL drops url's user and password, its fragment, and its query but for
// the bucket options that say where it points and are no secret (prefix=,
// endpoint=, region=, an emulator's domain=, …), as the user wrote them: a
// bucket shown without its prefix or endpoint is another bucket. An
// endpoint's own user and password go too. What is not a URL (a key)
// stays as it is.
func URL(u string) string {
	u, _, _ = strings.Cut(u, "#")
	u = userinfo.ReplaceAllString(u, "$1")
	i := strings.IndexByte(u, '?')
	if i < 0 {
		return u
	}
	var kept []string
	for _, param := range strings.Split(u[i+1:], "&") {
		k, v, _ := strings.Cut(param, "=")
		k, err1 := url.QueryUnescape(k)
		v, err2 := url.QueryUnescape(v)
		// No query of an endpoint's own, and no ";", which Go's query
		// parsing drops with the pair, so that domain=x;sig=… would
		// read as kept.
		if err1 != nil || err2 != nil || !shown[k] || strings.Contains(v, "?") || strings.Contains(param, ";") {
			continue
		}
		if strings.Contains(v, "@") {
			param = k + "=" + userinfo.ReplaceAllString(v, "$1")
			if strings.Contains(param, "@") {
				continue
			}
		}
		kept = append(kept, param)
	}
	if len(kept) == 0 {
		return u[:i]
	}
	return u[:i] + "?" + strings.Join(kept, "&")
}

// userinfo is a URL's user[:password]@ after its scheme, which must be
// its own ("s3://b?endpoint=http://u:p@h" is cleaned value by value).
var userinfo = regexp.MustCompile(`(?i)^([a-z0-9+.-]+://)[^/?#@]*@`)

// shown are the bucket URL options URL keeps: those of gocloud's drivers
// and DCD's prefix= that say which bucket and how it is reached, none of
// which holds a secret (a key's ID or file path is no key).
var shown = map[string]bool{
	"prefix": true, "region": true, "endpoint": true, "use_path_style": true, "s3ForcePathStyle": true, "disable_https": true,
	"profile": true, "accelerate": true, "dualstack": true, "fips": true, "hostname_immutable": true, "awssdk": true,
	"anonymous": true, "ssetype": true, "kmskeyid": true, "rate_limiter_capacity": true,
	"domain": true, "protocol": true, "localemu": true, "cdn": true, "storage_account": true, "universe_domain": true,
	"access_id": true, "private_key_path": true, "create_dir": true, "metadata": true, "no_tmp_dir": true,
}

// Text redacts every URL in s as URL does (a scheme's "://", up to a space
// or a quote): a command line, or an error that quotes the URL it failed
// on.
func Text(s string) string { return anyURL.ReplaceAllStringFunc(s, URL) }

// Schemes are case-insensitive: url.Parse, and so store.Open, take S3://.
var anyURL = regexp.MustCompile(`(?i)[a-z0-9+.-]+://[^\s"']*`)
