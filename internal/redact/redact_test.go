package redact

import (
	"strings"
	"testing"
)

// A worker's arguments, and a driver's error quoting a URL, lose the
// queries that may hold a token; what is not a URL stays as it is.
func TestText(t *testing.T) {
	got := strings.Fields(Text("-storage s3://pool?endpoint=http://x&token=SECRET -address a?b"))
	if strings.Contains(strings.Join(got, " "), "SECRET") || got[1] != "s3://pool" || got[3] != "a?b" {
		t.Errorf("Text: %q", got)
	}
	msg := Text(`open bucket "file:///d?create_dir=1&token=SECRET": invalid query parameter "token"`)
	if want := `open bucket "file:///d": invalid query parameter "token"`; msg != want {
		t.Errorf("Text = %q, want %q", msg, want)
	}
	if got := Text("AZBLOB://c?sig=SECRET"); got != "AZBLOB://c" { // as store.Open takes it
		t.Errorf("Text of an upper-case scheme = %q", got)
	}
	// A bucket's URL keeps the options that say where it points, as
	// written; a token, or a user and password in an endpoint, goes.
	for u, want := range map[string]string{
		"azblob://c?sig=SECRET": "azblob://c",
		"gs://dcd?prefix=sub/":  "gs://dcd?prefix=sub/",
		"azblob://dcd?localemu=true&protocol=http&domain=127.0.0.1:7962&sv=2021&sig=SECRET": "azblob://dcd?localemu=true&protocol=http&domain=127.0.0.1:7962",
		"s3://b?endpoint=http://u:SECRET@h:9000&region=eu-west-1":                           "s3://b?region=eu-west-1",
		"s3://b?endpoint=http%3A%2F%2Fh%3A9000&token=SECRET":                                "s3://b?endpoint=http%3A%2F%2Fh%3A9000",
		"file:///d?create_dir=1":                                     "file:///d",
		"azblob://c?domain=x;sig=SECRET&cdn=true":                    "azblob://c?cdn=true",
		"s3://b?endpoint=http://h/?X-Amz-Signature=SECRET&fips=true": "s3://b?fips=true",
		"s3://b?endpoint=http://h/%3Fsig%3DSECRET":                   "s3://b",
	} {
		if got := URL(u); got != want {
			t.Errorf("URL(%q) = %q, want %q", u, got, want)
		}
	}
}
