package schemas

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"dcd/internal/redact"
)

// checkCredentials refuses a config that carries a credential in a URL:
// a user and password, or a query's signature or token (a presigned
// manifest, a SAS model URL). A config is the pass's workflow input,
// recorded in its history, where whoever reads the server reads it; the
// workers' own credentials (their environment) reach what they may read.
// Image URIs inside a manifest are data, not the config, and may be
// presigned.
func (c Config) checkCredentials() error {
	refs := []struct{ field, ref string }{
		{"classes_file", c.ClassesFile}, {"target.path", c.Target.Path},
		{"data.train", c.Data.Train.ref()}, {"data.test", c.Data.Test.ref()}, {"data.error_sample", c.Data.ErrorSample.ref()},
		{"data.error_heldout", c.Data.ErrorHeldout.ref()}, {"data.pool", c.Data.Pool.ref()},
	}
	if c.Similarity != nil {
		refs = append(refs, struct{ field, ref string }{"similarity.path", c.Similarity.Path})
	}
	if t := c.Retrain.Trainer; t != nil {
		for i, arg := range t.Command {
			for _, u := range urlsIn.FindAllString(arg, -1) {
				refs = append(refs, struct{ field, ref string }{fmt.Sprintf("retrain.trainer.command[%d]", i), u})
			}
		}
		if i, name := secretArgument(t.Command); i >= 0 {
			return &FieldError{fmt.Sprintf("retrain.trainer.command[%d]", i), fmt.Sprintf("the value of %s looks like a credential: a config is recorded in the pass's history, where whoever reads the server reads it; give it to the trainer through the workers' environment, which a trainer inherits", name)}
		}
	}
	for _, r := range refs {
		if what := redact.Credential(r.ref); what != "" {
			return &FieldError{r.field, fmt.Sprintf("the URL holds %s: a config is recorded in the pass's history, where whoever reads the server reads it; copy the file into the workers' bucket, or give the workers access to it through their environment's credentials", what)}
		}
	}
	return nil
}

// secretArgument finds a credential passed as a command's argument, or
// as a word of one (a shell's script, sh -c "train.py --password X"):
// --password VALUE, --hf-token=VALUE, WANDB_API_KEY=VALUE (as env takes
// it). It returns the argument's index and the name that says what it is,
// or -1. Names are matched whole, not as redact.SecretName's substrings: a
// trainer's --max-tokens or --tokenizer is no credential; nor is a value
// that is a path (--token-file, --credentials /run/secrets/c.json,
// GOOGLE_APPLICATION_CREDENTIALS=/etc/key.json), which names where one is.
func secretArgument(command []string) (int, string) {
	for i, arg := range command {
		words := strings.Fields(arg)
		for j, word := range words {
			name, value, eq := strings.Cut(word, "=")
			flag := strings.HasPrefix(name, "-")
			if !flag && !eq || !secretFlag.MatchString(strings.TrimLeft(name, "-")) {
				continue
			}
			switch {
			case eq && value != "" && !isPath(value):
				return i, strconv.Quote(name)
			case flag && !eq && j+1 < len(words) && !strings.HasPrefix(words[j+1], "-") && !isPath(words[j+1]):
				return i, strconv.Quote(name)
			case flag && !eq && len(words) == 1 && i+1 < len(command) && !strings.HasPrefix(command[i+1], "-") && !isPath(command[i+1]):
				return i + 1, strconv.Quote(name)
			}
		}
	}
	return -1, ""
}

// isPath says whether a value names a file rather than holding a secret.
func isPath(v string) bool {
	v = strings.Trim(v, `"'`)
	return strings.HasPrefix(v, "/") || strings.HasPrefix(v, "./") || strings.HasPrefix(v, "~") || strings.HasPrefix(v, "{") ||
		strings.Contains(v, "/") && !strings.Contains(v, "://")
}

var secretFlag = regexp.MustCompile(`(?i)^([a-z0-9]+[-_])*(password|passwd|secret|token|api[-_]?key|access[-_]?key|secret[-_]?key|private[-_]?key|credentials?|sas)$`)

// urlsIn finds the URLs in a command's argument.
var urlsIn = regexp.MustCompile(`(?i)[a-z][a-z0-9+.-]*://[^\s"']*`)

// ref is the dataset's one location (Validate checks that it has one).
func (d Dataset) ref() string { return d.Prefix + d.Manifest + d.WebDataset }
