/* rhsay: RHVoice batch synthesis for fusion.corpus (the "rhvoice" engine).
   RHVoice 1.14 (PyPI rhvoice-wrapper-bin's RHVoice.dll) runs under wine: one engine, many
   utterances, so wine starts once per corpus worker, not once per utterance.
   Usage: wine rhsay.exe RHVoice.dll DATA_DIR [CONFIG_DIR]; each stdin line is
   OUT.wav TAB PROFILE TAB RELATIVE_RATE TAB RELATIVE_PITCH TAB TEXT, and each gets one
   stdout line, "ok OUT.wav" or "fail OUT.wav": 16-bit mono WAV at the voice's rate.
   Build: x86_64-w64-mingw32-gcc -O2 -static -o rhsay.exe rhsay.c (make rhvoice). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>

/* RHVoice.h, API 1.2 (RHVoice 1.2-1.14), as rhvoice-wrapper's ctypes bindings spell it. */
typedef struct {
  int (*set_sample_rate)(int, void*);
  int (*play_speech)(const short*, unsigned int, void*);
  int (*process_mark)(const char*, void*);
  int (*word_starts)(unsigned int, unsigned int, void*);
  int (*word_ends)(unsigned int, unsigned int, void*);
  int (*sentence_starts)(unsigned int, unsigned int, void*);
  int (*sentence_ends)(unsigned int, unsigned int, void*);
  int (*play_audio)(const char*, void*);
  void (*done)(void*);
} callbacks_t;
typedef struct {
  const char* data_path; const char* config_path; const char** resource_paths;
  callbacks_t callbacks; unsigned int options;
} init_params_t;
typedef struct {
  const char* voice_profile;
  double absolute_rate, absolute_pitch, absolute_volume;
  double relative_rate, relative_pitch, relative_volume;
  int punctuation_mode; const char* punctuation_list; int capitals_mode; int flags;
} synth_params_t;

typedef void* (*new_engine_t)(const init_params_t*);
typedef void* (*new_message_t)(void*, const char*, unsigned int, int, const synth_params_t*, void*);
typedef int (*speak_t)(void*);
typedef void (*delete_message_t)(void*);
typedef const char* (*version_t)(void);

static short* buf = NULL; static size_t n = 0, cap = 0; static int rate = 0;
static int on_rate(int r, void* u) { (void)u; rate = r; return 1; }
static int on_speech(const short* s, unsigned int c, void* u) {
  (void)u;
  if (n + c > cap) { cap = (n + c) * 2; buf = realloc(buf, cap * sizeof(short)); }
  memcpy(buf + n, s, c * sizeof(short)); n += c; return 1;
}
static void put32(FILE* f, unsigned v) { fwrite(&v, 4, 1, f); }
static void put16(FILE* f, unsigned short v) { fwrite(&v, 2, 1, f); }
static int write_wav(const char* path) {
  FILE* f = fopen(path, "wb"); if (!f) return 0;
  fwrite("RIFF", 1, 4, f); put32(f, 36 + n * 2); fwrite("WAVEfmt ", 1, 8, f);
  put32(f, 16); put16(f, 1); put16(f, 1); put32(f, rate); put32(f, rate * 2); put16(f, 2); put16(f, 16);
  fwrite("data", 1, 4, f); put32(f, n * 2); fwrite(buf, 2, n, f); fclose(f); return 1;
}

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: rhsay DLL DATA_DIR < jobs\n"); return 2; }
  HMODULE lib = LoadLibraryA(argv[1]);
  if (!lib) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
  new_engine_t new_engine = (new_engine_t)GetProcAddress(lib, "RHVoice_new_tts_engine");
  new_message_t new_message = (new_message_t)GetProcAddress(lib, "RHVoice_new_message");
  speak_t speak = (speak_t)GetProcAddress(lib, "RHVoice_speak");
  delete_message_t delete_message = (delete_message_t)GetProcAddress(lib, "RHVoice_delete_message");
  version_t version = (version_t)GetProcAddress(lib, "RHVoice_get_version");
  if (!new_engine || !new_message || !speak || !delete_message || !version) {
    fprintf(stderr, "%s lacks the RHVoice API\n", argv[1]); return 1;
  }
  const char* none[] = {NULL};
  init_params_t ip; memset(&ip, 0, sizeof ip);
  ip.data_path = argv[2]; ip.config_path = argc > 3 ? argv[3] : argv[2]; ip.resource_paths = none;
  ip.callbacks.set_sample_rate = on_rate; ip.callbacks.play_speech = on_speech;
  void* engine = new_engine(&ip);
  if (!engine) { fprintf(stderr, "engine initialisation failed\n"); return 1; }
  fprintf(stderr, "RHVoice %s\n", version());
  static char line[65536];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\r\n")] = 0;
    char* f[5]; int k = 0; char* p = line;
    for (; k < 4; k++) { f[k] = p; p = strchr(p, '\t'); if (!p) break; *p++ = 0; }
    if (k < 4) { printf("fail %s\n", line); fflush(stdout); continue; }
    f[4] = p;
    synth_params_t sp; memset(&sp, 0, sizeof sp);
    sp.voice_profile = f[1]; sp.relative_rate = atof(f[2]); sp.relative_pitch = atof(f[3]);
    sp.relative_volume = 1.0; sp.flags = 1;
    n = 0;
    void* m = new_message(engine, f[4], (unsigned)strlen(f[4]), 0, &sp, NULL);
    int ok = m && speak(m) && n > 0 && write_wav(f[0]);
    if (m) delete_message(m);
    printf("%s %s\n", ok ? "ok" : "fail", f[0]); fflush(stdout);
  }
  return 0;
}
