# Baichuan2 tokenizer, portable remote code written by baichuan2-sft (Apache-2.0).
# Loads with trust_remote_code=True on transformers 4.33 (the official stack) and on transformers 5.
"""Baichuan2's SentencePiece tokenizer (slow), the same ids as the official one.

Encoding is `sp.encode(text)` of the shipped `tokenizer.model` (no dummy-prefix space, whitespace kept, digits
split, byte fallback; `<reserved_106>` is id 195), with the literal special-token strings `<s>`, `</s>` and
`<unk>` split out as their ids. Decoding inverts encoding: `decode(encode(x)) == x`.

The SentencePiece model is loaded before the base class initialises: transformers >= 4.34 reads the vocabulary
during that initialisation (the official file loaded it afterwards and failed there).
"""

import os
import shutil

import sentencepiece as spm
from transformers import PreTrainedTokenizer
from transformers.tokenization_utils_base import AddedToken

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}


def _plain_token(token):
    # No whitespace stripping around special tokens (transformers 4.33 strips around plain strings).
    return AddedToken(token, lstrip=False, rstrip=False) if isinstance(token, str) else token


class BaichuanTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        sp_model_kwargs=None,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        **kwargs,
    ):
        self.vocab_file = vocab_file
        self.sp_model_kwargs = sp_model_kwargs or {}
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)
        super().__init__(
            bos_token=_plain_token(bos_token),
            eos_token=_plain_token(eos_token),
            unk_token=_plain_token(unk_token),
            pad_token=_plain_token(pad_token) if pad_token is not None else None,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            sp_model_kwargs=self.sp_model_kwargs,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = None
        return state

    def __setstate__(self, d):
        self.__dict__ = d
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(self.vocab_file)

    @property
    def vocab_size(self):
        return self.sp_model.get_piece_size()

    def get_vocab(self):
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text, **kwargs):
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens):
        # Special and added tokens are not decoded by sp ("<s>" would become "", "<unk>" " ⁇ "): emit them
        # verbatim and let sp decode the runs in between, which also reassembles byte-fallback pieces.
        verbatim = set(self.all_special_tokens) | set(self.added_tokens_encoder)
        text, run = [], []
        for token in tokens:
            if token in verbatim:
                text.append(self.sp_model.decode_pieces(run))
                text.append(token)
                run = []
            else:
                run.append(token)
        text.append(self.sp_model.decode_pieces(run))
        return "".join(text)

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        # One rule on every transformers version: transformers 4.33 would put spaces around special tokens.
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    if hasattr(PreTrainedTokenizer, "apply_chat_template"):  # transformers >= 4.34

        def apply_chat_template(self, conversation, *args, **kwargs):
            """transformers' apply_chat_template, except for `return_assistant_tokens_mask=True`: transformers
            locates the `{% generation %}` spans with token offsets, which a slow tokenizer has none of, so here
            the rendered text is encoded piece by piece at the span boundaries (checked to give the same ids as
            encoding it whole)."""
            if not kwargs.get("return_assistant_tokens_mask") or args:
                return super().apply_chat_template(conversation, *args, **kwargs)
            return self._chat_with_assistant_masks(conversation, **kwargs)

        def _chat_with_assistant_masks(
            self,
            conversation,
            chat_template=None,
            tools=None,
            documents=None,
            add_generation_prompt=False,
            tokenize=True,
            return_dict=True,
            return_tensors=None,
            return_assistant_tokens_mask=True,
            **kwargs,
        ):
            from transformers.tokenization_utils_base import BatchEncoding
            from transformers.utils.chat_template_utils import render_jinja_template

            if not (tokenize and return_dict):
                raise ValueError(
                    "`return_assistant_tokens_mask=True` requires `return_dict=True` and `tokenize=True`"
                )
            options = (
                "padding",
                "truncation",
                "max_length",
                "continue_final_message",
                "sanitize_control_tokens",
            )
            unsupported = [name for name in options if kwargs.pop(name, None)]
            if unsupported or kwargs.pop("tokenizer_kwargs", None):
                raise ValueError(
                    f"BaichuanTokenizer: return_assistant_tokens_mask cannot be combined with {unsupported}"
                )
            batched = isinstance(conversation[0], (list, tuple))
            rendered, spans = render_jinja_template(
                conversations=conversation if batched else [conversation],
                tools=tools,
                documents=documents,
                chat_template=self.get_chat_template(chat_template, tools),
                return_assistant_tokens_mask=True,
                add_generation_prompt=add_generation_prompt,
                **{**self.special_tokens_map, **kwargs},
            )
            input_ids, masks = [], []
            for text, text_spans in zip(rendered, spans):
                bounds = [0] + [i for span in text_spans for i in span] + [len(text)]
                ids, mask = [], []
                for k in range(len(bounds) - 1):
                    piece_ids = self.encode(text[bounds[k] : bounds[k + 1]], add_special_tokens=False)
                    ids += piece_ids
                    mask += [k % 2] * len(piece_ids)  # odd pieces are the generation spans
                if ids != self.encode(text, add_special_tokens=False):
                    raise ValueError(
                        "BaichuanTokenizer: a {% generation %} span does not start or end on a token boundary"
                    )
                input_ids.append(ids)
                masks.append(mask)
            data = {
                "input_ids": input_ids,
                "attention_mask": [[1] * len(ids) for ids in input_ids],
                "assistant_masks": masks,
            }
            if not batched and return_tensors is None:
                data = {key: value[0] for key, value in data.items()}
            return BatchEncoding(data, tensor_type=return_tensors)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        ids = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            ids += bos + token_ids_1 + eos
        return ids

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        ids = self.build_inputs_with_special_tokens(token_ids_0, token_ids_1)
        return [0] * len(ids)

    def save_vocabulary(self, save_directory, filename_prefix=None):
        if not os.path.isdir(save_directory):
            raise ValueError(f"{save_directory}: not a directory")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        out_file = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        if os.path.abspath(self.vocab_file) != os.path.abspath(out_file):
            if os.path.isfile(self.vocab_file):
                shutil.copyfile(self.vocab_file, out_file)
            else:
                with open(out_file, "wb") as f:
                    f.write(self.sp_model.serialized_model_proto())
        return (out_file,)
