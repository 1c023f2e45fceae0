// Package redact keeps the queries of storage URLs, which may carry an
// endpoint's token (a SAS token, a presigned signature), out of logs,
// messages and workflow histories.
package redact

import (
	"regexp"
	"strings"
)

// URL drops url's query.
func URL(url string) string {
	if i := strings.IndexByte(url, '?'); i >= 0 {
		return url[:i]
	}
	return url
}

// Text drops the query of every URL in s (a scheme's "://", up to a space
// or a quote): a command line, or an error that quotes the URL it failed
// on.
func Text(s string) string { return urlQuery.ReplaceAllString(s, "$1") }

// Schemes are case-insensitive: url.Parse, and so store.Open, take S3://.
var urlQuery = regexp.MustCompile(`(?i)([a-z0-9+.-]+://[^\s?"]*)\?[^\s"]*`)
