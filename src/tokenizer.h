/* tokenizer.h: Hugging Face tokenizer.json (byte-level BPE and SentencePiece-style BPE),
 * tokenizer_config.json and generation_config.json, matching HF tokenizers id for id. */
#ifndef FM_TOKENIZER_H
#define FM_TOKENIZER_H

#include "common.h"

typedef struct fm__tokenizer fm__tokenizer;
typedef struct fm__tok_stream fm__tok_stream;

/* Loads dir/tokenizer.json (+ tokenizer_config.json, generation_config.json, config.json
 * when present). FM_ERR_FORMAT names the file and the field at fault. */
fm_status fm__tok_load(const char *dir, fm__tokenizer **out);
void fm__tok_free(fm__tokenizer *t);

/* Encodes UTF-8 text (invalid UTF-8 is FM_ERR_ARG). add_special: add BOS/EOS as the
 * tokenizer config asks (0 = none). *ids: malloc'd, release with free(). */
fm_status fm__tok_encode(const fm__tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n);
/* Decodes ids (special tokens included as text). *out malloc'd, NUL-terminated. */
fm_status fm__tok_decode(const fm__tokenizer *t, const int32_t *ids, size_t n, char **out,
                         size_t *len);

int32_t fm__tok_vocab_size(const fm__tokenizer *t);
/* Id of an exact token string (added tokens included), or -1. */
int32_t fm__tok_token_id(const fm__tokenizer *t, const char *token);
/* EOS ids from generation_config.json / tokenizer_config.json / config.json; *ids owned
 * by the tokenizer. Returns the count. */
int fm__tok_eos_ids(const fm__tokenizer *t, const int32_t **ids);
/* bos_token / eos_token strings for templates (NULL if none), and the chat template
 * source (tokenizer_config.json chat_template, the "default" of a named list, or
 * chat_template.jinja), or NULL. Owned by the tokenizer. */
const char *fm__tok_bos_token(const fm__tokenizer *t);
const char *fm__tok_eos_token(const fm__tokenizer *t);
const char *fm__tok_chat_template(const fm__tokenizer *t);

/* Streaming decode: push ids one at a time; *piece receives the newly completed text
 * (never ending inside a UTF-8 character; may be empty), valid until the next push. */
fm_status fm__tok_stream_new(const fm__tokenizer *t, fm__tok_stream **out);
fm_status fm__tok_stream_push(fm__tok_stream *s, int32_t id, const char **piece, size_t *len);
/* Returns any bytes still held back (an incomplete character at the end). */
fm_status fm__tok_stream_flush(fm__tok_stream *s, const char **piece, size_t *len);
void fm__tok_stream_free(fm__tok_stream *s);

/* Loads a tokenizer from tokenizer.json text in memory (no config files: no BOS/EOS from
 * tokenizer_config.json, no chat template). Errors as fm__tok_load. */
fm_status fm__tok_load_json(const char *json, size_t len, fm__tokenizer **out);
/* Text of a token id as stored in the vocabulary (added tokens included), or NULL. */
const char *fm__tok_id_to_piece(const fm__tokenizer *t, int32_t id);
/* 1 if id is an added token marked special (e.g. <|im_end|>), else 0. */
int fm__tok_is_special(const fm__tokenizer *t, int32_t id);
/* Id of bos_token (tokenizer_config.json, else config.json bos_token_id), or -1. */
int32_t fm__tok_bos_id(const fm__tokenizer *t);

#endif
