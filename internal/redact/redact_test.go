package redact

import (
	"strings"
	"testing"
)

// A worker's arguments, and a driver's error quoting a URL, lose what in
// a URL may be a secret and keep where it points; what is not a URL
// stays as it is.
func TestText(t *testing.T) {
	got := strings.Fields(Text("-storage s3://pool?endpoint=http://x&token=SECRET -address a?b"))
	if strings.Contains(strings.Join(got, " "), "SECRET") || got[1] != "s3://pool?endpoint=http://x" || got[3] != "a?b" {
		t.Errorf("Text: %q", got)
	}
	msg := Text(`open bucket "file:///d?create_dir=1&token=SECRET": invalid query parameter "token"`)
	if want := `open bucket "file:///d?create_dir=1": invalid query parameter "token"`; msg != want {
		t.Errorf("Text = %q, want %q", msg, want)
	}
	if got := Text("AZBLOB://c?sig=SECRET"); got != "AZBLOB://c" { // as store.Open takes it
		t.Errorf("Text of an upper-case scheme = %q", got)
	}
	// A URL in single quotes, as a trainer's log line shows its command,
	// ends at the quote.
	if got := Text(`$ sh -c 'train -storage "s3://b?sig=SECRET" -job x' 'https://h/m?X-Amz-Signature=SECRET' -y`); got != `$ sh -c 'train -storage "s3://b" -job x' 'https://h/m' -y` {
		t.Errorf("Text of quoted URLs = %q", got)
	}
	if got := Text("read s3://USER:SECRET@b/x.png#sig=SECRET failed"); got != "read s3://b/x.png failed" {
		t.Errorf("Text of a URL with a user and fragment = %q", got)
	}
	// A bucket key quoted by a driver, no URL, loses a credential's value.
	if got := Text(`blob (key "pool/x.png?a=1&sig=SECRET;x") not found`); got != `blob (key "pool/x.png?a=1&sig=***;x") not found` {
		t.Errorf("Text of a key with a signature = %q", got)
	}
	// A bucket's URL keeps the options that say where it points, as
	// written; a token, a user and password, or a fragment goes.
	for u, want := range map[string]string{
		"azblob://c?sig=SECRET": "azblob://c",
		"gs://dcd?prefix=sub/":  "gs://dcd?prefix=sub/",
		"azblob://dcd?localemu=true&protocol=http&domain=127.0.0.1:7962&sv=2021&sig=SECRET": "azblob://dcd?localemu=true&protocol=http&domain=127.0.0.1:7962",
		"s3://b?endpoint=http://u:SECRET@h:9000&region=eu-west-1":                           "s3://b?endpoint=http://h:9000&region=eu-west-1",
		"s3://b?endpoint=http%3A%2F%2Fu%3ASECRET%40h%3A9000":                                "s3://b?endpoint=http://h:9000",
		"s3://b?endpoint=http%3A%2F%2Fh%3A9000&token=SECRET":                                "s3://b?endpoint=http%3A%2F%2Fh%3A9000",
		"file:///d?create_dir=1":                                                            "file:///d?create_dir=1",
		"azblob://c?domain=x;sig=SECRET&cdn=true":                                           "azblob://c?cdn=true",
		"s3://b?endpoint=http://h/?X-Amz-Signature=SECRET&fips=true":                        "s3://b?fips=true",
		"s3://b?endpoint=https%3A%2F%2Fh%2F%23token%3DSECRET&region=r":                      "s3://b?region=r",
		"s3://b?endpoint=http://h/%3Fsig%3DSECRET":                                          "s3://b",
		"s3://USER:SECRET@b?region=us-east-1#sig=SECRET":                                    "s3://b?region=us-east-1",
		"s3://b?region=us-east-1#sig=SECRET":                                                "s3://b?region=us-east-1",
		"https://h/x.png?X-Amz-Signature=SECRET":                                            "https://h/x.png",
		"https://u:SECRET@h/x.png":                                                          "https://h/x.png",
		"s3://b?endpoint=http://u:SECRET@h@evil":                                            "s3://b?endpoint=http://evil",
		"https://user:p@SECRET@host/path":                                                   "https://host/path",
		"/pool/a.png":                                                                       "/pool/a.png",
		"data/img#1.png":                                                                    "data/img#1.png",
		"data/a?b.png":                                                                      "data/a?b.png",
		"data/a.png?x=1&sig=SECRET":                                                         "data/a.png?x=1&sig=***",
		"pool/a b.png":                                                                      "pool/a b.png",
		// An image key of a WebDataset at a URL keeps its member's name
		// and range, which a URL's fragment would otherwise lose.
		"file:///data/pool/00001.tar#img01706.png@9728+18":                     "file:///data/pool/00001.tar#img01706.png@9728+18",
		"s3://b/0.tar?region=eu-west-1&X-Amz-Signature=SECRET#d%231/a.png@1+2": "s3://b/0.tar?region=eu-west-1#d%231/a.png@1+2",
		"https://u:SECRET@h/0.tar#a.png@1+2":                                   "https://h/0.tar#a.png@1+2",
		"https://h/0.tar#sig=SECRET@1+2":                                       "https://h/0.tar#sig=***",
	} {
		if got := URL(u); got != want {
			t.Errorf("URL(%q) = %q, want %q", u, got, want)
		}
	}
}

// Credential finds a credential however a URL spells it, and takes what
// only looks like one for none: a user without a password (an ssh URL's
// git@), and names that hold "auth", "key" or "session" in other words.
func TestCredential(t *testing.T) {
	for _, s := range []string{
		"https://u:p@h/m.csv", "s3://b/m?endpoint=http%3A%2F%2Fu%3Ap%40h", "https://h/m.csv?a=1;sig=x", "https://h/m.csv#token=x",
		"https://h/m.csv?AccountKey=x", "https://h/m.csv?client_secret=x", "https://h/m.csv?X-Amz-Signature=x", "https://h/m?api-key=x",
		"https://h/m?pw=x", "https://h/m?auth=x", "https://h/m?x_auth=x", "https://h/m?hmac=x",
	} {
		if Credential(s) == "" {
			t.Errorf("Credential(%q) found none", s)
		}
	}
	for _, s := range []string{
		"git+ssh://git@github.com/org/trainer.git", "ssh://git@host/repo", "https://h/m.csv?author=a&authority=b&session=c&monkey=d",
		"s3://b/m.csv?region=us-east-1&endpoint=http://minio:9000&kmskeyid=k&ssetype=aws:kms&awssdk=v2&requester_pays=true",
		"gs://b/m.csv?access_id=sa@p.iam&private_key_path=/k.pem", "file:///d/m.csv?create_dir=1&metadata=skip&no_tmp_dir=1",
		"pool/img#1.png", "pool/a@b.png",
	} {
		if what := Credential(s); what != "" {
			t.Errorf("Credential(%q) = %q, want none", s, what)
		}
	}
}

// Env masks credential variables' values in a program's output: whole, as
// JSON escapes them, line by line and in runs of 8 or more characters
// (a connection string's key split on ';'), and HTTP credentials; other
// variables' values and short runs stay.
func TestEnv(t *testing.T) {
	mask := Env([]string{
		"AWS_SECRET_ACCESS_KEY=S3CR3TKEY123",
		"AZURE_STORAGE_CONNECTION_STRING=AccountName=a;AccountKey=S3CR3TACCOUNTKEY==;EndpointSuffix=x",
		"MULTI_TOKEN=first-line-S3CR3T\nsecond-line-S3CR3T",
		`QUOTED_SECRET=say "S3CR3T" aloud`,
		"DCD_EP=cpu-everywhere",
	})
	out := mask(`key S3CR3TKEY123; account AccountKey=S3CR3TACCOUNTKEY==; second-line-S3CR3T; {"v":"say \"S3CR3T\" aloud"}` +
		"\nAuthorization: Bearer abcdefgh12345678\nep cpu-everywhere, epoch 1")
	if strings.Contains(out, "S3CR3T") || strings.Contains(out, "abcdefgh12345678") {
		t.Errorf("a credential shows: %q", out)
	}
	if !strings.Contains(out, "ep cpu-everywhere, epoch 1") || !strings.Contains(out, "Authorization: Bearer ***") {
		t.Errorf("%q: want other values and short runs kept, the bearer token masked", out)
	}
}
