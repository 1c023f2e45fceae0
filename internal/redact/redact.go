// Package redact keeps the secrets URLs may carry (an endpoint's token in
// a query: a SAS token, a presigned signature; a user and password before
// the host; a fragment) out of logs, messages and workflow histories, and
// the values of credential variables out of a program's output (Env).
package redact

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// URL drops url's user and password, its fragment, and its query but for
// the bucket options that say where it points and are no secret (prefix=,
// endpoint=, region=, an emulator's domain=, …), as the user wrote them: a
// bucket shown without its prefix or endpoint is another bucket. An
// endpoint's own user and password go too. A fragment that names an
// archive's member (#name@offset+size, an image key of a WebDataset at a
// URL) is the image's name and stays, its credential pairs masked. What is
// not a URL (a key) stays as it is.
func URL(u string) string {
	if !strings.Contains(u, "://") {
		// A key: '#' and '?' are its name's ("img#1.png"), but a
		// credential's value in a pair goes.
		return maskPairs(u)
	}
	u, frag, _ := strings.Cut(u, "#")
	if member.MatchString(frag) {
		return bucketURL(u) + maskPairs("#"+frag)
	}
	return bucketURL(u)
}

// member is an archive member's part of an image key (webdataset.Member).
var member = regexp.MustCompile(`^[^#]+@[0-9]+\+[0-9]+$`)

// bucketURL is URL of a URL without its fragment.
func bucketURL(u string) string {
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
		// No query or fragment of an endpoint's own, and no ";", which
		// Go's query parsing drops with the pair, so that domain=x;sig=…
		// would read as kept.
		if err1 != nil || err2 != nil || !shown[k] || strings.ContainsAny(v, "?#") || strings.Contains(param, ";") {
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

// userinfo is a URL's user[:password]@ after its scheme, up to the last
// '@' before its path, as url.Parse reads it (a password may hold '@'); it
// must be the URL's own ("s3://b?endpoint=http://u:p@h" is cleaned value
// by value).
var userinfo = regexp.MustCompile(`(?i)^([a-z0-9+.-]+://)[^/?#]*@`)

// shown are the bucket URL options URL keeps: those of gocloud's drivers
// and DCD's prefix= that say which bucket and how it is reached, none of
// which holds a secret (a key's ID or file path is no key).
var shown = map[string]bool{
	"prefix": true, "region": true, "endpoint": true, "use_path_style": true, "s3ForcePathStyle": true, "disable_https": true,
	"profile": true, "accelerate": true, "dualstack": true, "fips": true, "hostname_immutable": true, "awssdk": true,
	"anonymous": true, "ssetype": true, "kmskeyid": true, "rate_limiter_capacity": true,
	"domain": true, "protocol": true, "localemu": true, "cdn": true, "storage_account": true, "universe_domain": true,
	"access_id": true, "private_key_path": true, "create_dir": true, "metadata": true, "no_tmp_dir": true,
	"secret_key_path": true, "base_url": true, "dir_file_mode": true,
}

// Text redacts every URL in s as URL does (a scheme's "://", up to a space
// or a quote), and the value of every other query pair whose name says it
// is a credential (a bucket key "x.png?sig=…" quoted by a driver): a
// command line, or an error that quotes what it failed on.
func Text(s string) string { return maskPairs(anyURL.ReplaceAllStringFunc(s, URL)) }

// maskPairs replaces the value of every query pair in s whose name says
// credential with ***.
func maskPairs(s string) string {
	return pair.ReplaceAllStringFunc(s, func(m string) string {
		sub := pair.FindStringSubmatch(m)
		if !SecretParam(sub[2]) {
			return m
		}
		return sub[1] + sub[2] + "=***"
	})
}

// pair is a query pair after its separator (';' too: Go's query parsing
// drops a pair holding one, but a server may read it).
var pair = regexp.MustCompile(`([?&;#])([A-Za-z0-9_.-]+)=([^\s"'&;#]*)`)

// SecretParam says whether a query parameter's name says it holds a
// credential: a signature, a token, a key, a password, a session's or a
// client's secret, in the spellings of S3, GCS, Azure SAS, OSS and common
// APIs. The bucket options URL keeps are none, though some name a key's
// ID or file.
func SecretParam(name string) bool {
	return !shown[name] && SecretName(name)
}

// SecretName says whether a name (a query parameter's, an environment
// variable's) says its value is a credential.
func SecretName(name string) bool { return secretName.MatchString(name) }

var secretName = regexp.MustCompile(`(?i)^(sig|sas|key|apikey|auth|authorization|pw|pass|hmac|` +
	`.*[-_](key|sig|sas|auth|pw|apikey|hmac)|` +
	`.*(token|secret|passw|pwd|signature|credential|jwt|connection_?string|(access|secret|account|shared|private|master|client|api)[-_]?key).*)$`)

// Credential says what credential s holds where it is or holds a URL: "a
// user and password" (its own, or an endpoint's in its query), or "the
// query parameter \"sig\"" (after '?', '&', ';' or '#', percent-escaped
// or not); "" for none. For a check that refuses s before it is recorded.
func Credential(s string) string {
	for range 3 { // percent-escaped up to twice
		if userinfoAnywhere.MatchString(s) {
			return "a user and password"
		}
		for _, m := range pair.FindAllStringSubmatch(s, -1) {
			if SecretParam(m[2]) {
				return fmt.Sprintf("the query parameter %q", m[2])
			}
		}
		s = unescape(s)
	}
	return ""
}

// userinfoAnywhere is a URL's user:password@, wherever the URL starts (a
// user alone, git@ of an ssh URL, is a name, not a credential).
var userinfoAnywhere = regexp.MustCompile(`(?i)[a-z][a-z0-9+.-]*://[^/?#\s]*:[^/?#\s]*@`)

// unescape decodes s's valid %XX escapes and leaves the rest: a URL that
// does not parse may still hold a credential.
func unescape(s string) string {
	return escape.ReplaceAllStringFunc(s, func(m string) string {
		b, _ := hex.DecodeString(m[1:])
		return string(b)
	})
}

var escape = regexp.MustCompile(`%[0-9A-Fa-f]{2}`)

// Schemes are case-insensitive: url.Parse, and so store.Open, take S3://.
var anyURL = regexp.MustCompile(`(?i)[a-z0-9+.-]+://[^\s"']*`)

// Env returns a function that replaces, in a program's output (a trainer's
// log), the values of env's variables whose names say credential
// (SecretName: AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_KEY, a
// connection string, MYSQL_PWD, *TOKEN*, *_KEY, …) and an HTTP header's
// bearer or basic credential, with "***". A value is masked whole, as
// JSON escapes it, line by line, and in each run of 8 or more of its
// token characters, so that a value quoted, escaped, split on ';' or '='
// (a connection string's AccountKey) or cut to its last lines is masked
// still. Shorter runs are left: "***" in place of every "1" would garble
// the log and hide nothing.
func Env(env []string) func(string) string {
	seen := map[string]bool{}
	var pieces []string
	add := func(p string) {
		if len(p) >= 8 && !seen[p] {
			seen[p] = true
			pieces = append(pieces, p)
		}
	}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		if !SecretName(name) {
			continue
		}
		add(value)
		if quoted, err := json.Marshal(value); err == nil {
			add(string(quoted[1 : len(quoted)-1]))
		}
		for _, line := range strings.Split(value, "\n") {
			add(strings.TrimSpace(line))
		}
		for _, run := range tokenRun.FindAllString(value, -1) {
			add(run)
		}
	}
	// The longest first: a value's run must not cut the whole value.
	slices.SortFunc(pieces, func(a, b string) int { return len(b) - len(a) })
	var pairs []string
	for _, p := range pieces {
		pairs = append(pairs, p, "***")
	}
	r := strings.NewReplacer(pairs...)
	return func(s string) string {
		return authHeader.ReplaceAllString(r.Replace(s), "$1 ***")
	}
}

var (
	tokenRun   = regexp.MustCompile(`[A-Za-z0-9+/_.:-]{8,}`)
	authHeader = regexp.MustCompile(`(?i)(authorization:\s*(?:bearer|basic)|\bbearer)\s+[A-Za-z0-9._~+/=-]{8,}`)
)
