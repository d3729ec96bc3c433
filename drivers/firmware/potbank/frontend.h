// The analog front end of the in-situ controller (PROTOCOL.md §12.6), Mega 2560:
// its link on USART1 (TX1 D18, RX1 D19) at 1 Mbaud, and the LEARN enable line on D2 (PE4),
// high exactly while the edges may update themselves, timed by Timer1 (16 MHz / 8: 0.5 us
// per tick). Included by potbank.ino when built with POTBANK_INSITU.
#pragma once
#include "insitu.h"

const uint32_t AFE_BAUD = 1000000;
const uint16_t AFE_TIMEOUT_MS = 1000;  // a front end that does not answer stops the run
const uint8_t LEARN_PIN = 2;  // PE4
enum AfeCmd : uint8_t { AFE_INFO = 1, AFE_MEASURE, AFE_ARM, AFE_GET_TAPS, AFE_SET_TAPS, AFE_RELEASE };

// A request frame: cmd, len, payload[len], CRC-16/CCITT-FALSE (big-endian) of the rest;
// the reply: cmd | 0x80, len, payload[len] (status first), CRC.
uint8_t afe_buf[4 + 1 + 4 * 3 * potbank::INSITU_MAX_PORTS];
potbank::FrontEndInfo afe;

static_assert(sizeof(afe_buf) >= 4 + 1 + 4 * INSITU_MAX_NODES, "MEASURE reply");
static_assert(sizeof(afe_buf) >= 4 + 1 + 2 * INSITU_MAX_EDGES, "GET_TAPS reply");

// Send afe_buf[2 .. 2+n) as request cmd; the reply's payload (after its status) lands at
// afe_buf + 3. Returns the payload's length, or -1 (no reply, damaged, or status not OK).
int16_t afe_exchange(uint8_t cmd, uint8_t n, bool wait = true) {
  while (Serial1.available()) Serial1.read();  // a late reply to an earlier request
  afe_buf[0] = cmd;
  afe_buf[1] = n;
  uint16_t crc = potbank::crc16(afe_buf, 2 + n);
  afe_buf[2 + n] = crc >> 8;
  afe_buf[3 + n] = crc & 0xFF;
  Serial1.write(afe_buf, 4 + n);
  if (!wait) return 0;
  uint16_t got = 0, need = 4;
  uint32_t start = millis();
  while (got < need) {
    if (Serial1.available()) {
      afe_buf[got++] = (uint8_t)Serial1.read();
      if (got == 2) need = 4 + afe_buf[1];
      if (need > sizeof(afe_buf)) return -1;
    } else if (millis() - start > AFE_TIMEOUT_MS) {
      return -1;
    }
  }
  uint16_t len = afe_buf[1];
  crc = potbank::crc16(afe_buf, 2 + len);
  if (afe_buf[0] != (cmd | 0x80) || len < 1 || afe_buf[2] != 0 ||
      afe_buf[2 + len] != (crc >> 8) || afe_buf[3 + len] != (crc & 0xFF))
    return -1;
  return len - 1;
}

uint8_t put_floats(uint8_t at, const float* v, uint8_t n) {
  memcpy(afe_buf + at, v, 4 * n);
  return at + 4 * n;
}

bool fe_info(potbank::FrontEndInfo* out) {
  int16_t n = afe_exchange(AFE_INFO, 0);
  const uint8_t* p = afe_buf + 3;
  if (n < 6 || p[5] > potbank::INSITU_MAX_PORTS || n != 6 + p[5]) return false;
  afe.n_nodes = p[0]; afe.n_edges = p[1]; afe.n_taps = p[2] | p[3] << 8;
  afe.n_sources = p[4]; afe.n_outputs = p[5];
  memcpy(afe.outputs, p + 6, afe.n_outputs);
  *out = afe;
  return true;
}

bool fe_measure(const float* sources, const float* clamps, float* nodes) {
  afe_buf[2] = clamps ? 1 : 0;
  uint8_t at = put_floats(3, sources, afe.n_sources);
  if (clamps) at = put_floats(at, clamps, afe.n_outputs);
  if (afe_exchange(AFE_MEASURE, at - 2) != 4 * afe.n_nodes) return false;
  memcpy(nodes, afe_buf + 3, 4 * afe.n_nodes);
  return true;
}

bool fe_arm(const float* sources, const float* clamps, const float* free_clamps) {
  afe_buf[2] = free_clamps ? 1 : 0;
  uint8_t at = put_floats(3, sources, afe.n_sources);
  at = put_floats(at, clamps, afe.n_outputs);
  if (free_clamps) at = put_floats(at, free_clamps, afe.n_outputs);
  return afe_exchange(AFE_ARM, at - 2) == 0;
}

// LEARN high for `ticks` Timer1 ticks. OCF1A is set one timer clock after TCNT1 reaches
// OCR1A (ATmega2560 datasheet, "Timer/Counter Timing Diagrams"), so OCR1A = ticks - 1.
// Interrupts are off meanwhile, so the line falls within one tick of the match (serial
// bytes that arrive during a window longer than the USART's two-byte buffer can be lost;
// the protocol's retries cover them).
void fe_window(uint16_t ticks) {
  uint8_t sreg = SREG;
  cli();
  TCCR1B = 0;
  TCCR1A = 0;
  TCNT1 = 0;
  OCR1A = ticks - 1;
  TIFR1 = _BV(OCF1A);
  PORTE |= _BV(PE4);
  TCCR1B = _BV(CS11);  // clk / 8
  while (!(TIFR1 & _BV(OCF1A))) {}
  PORTE &= ~_BV(PE4);
  TCCR1B = 0;
  SREG = sreg;
}

bool fe_get_taps(uint16_t* taps) {
  if (afe_exchange(AFE_GET_TAPS, 0) != 2 * afe.n_edges) return false;
  for (uint8_t j = 0; j < afe.n_edges; j++) taps[j] = afe_buf[3 + 2 * j] | afe_buf[4 + 2 * j] << 8;
  return true;
}

bool fe_set_taps(const uint16_t* taps) {
  for (uint8_t j = 0; j < afe.n_edges; j++) { afe_buf[2 + 2 * j] = taps[j] & 0xFF; afe_buf[3 + 2 * j] = taps[j] >> 8; }
  return afe_exchange(AFE_SET_TAPS, 2 * afe.n_edges) == 0;
}

void fe_release() {
  PORTE &= ~_BV(PE4);
  afe_exchange(AFE_RELEASE, 0, false);  // its reply is flushed by the next request
}

potbank::FrontEnd front_end() {
  return {fe_info, fe_measure, fe_arm, fe_window, fe_get_taps, fe_set_taps, fe_release};
}

void front_end_begin() {
  digitalWrite(LEARN_PIN, LOW);
  pinMode(LEARN_PIN, OUTPUT);
  Serial1.begin(AFE_BAUD);
}
