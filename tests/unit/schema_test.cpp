// The validator's building blocks: value parsing, range and type errors, suggestions, and the
// plugin ConfigKey declarations it accepts or refuses.
#include <gtest/gtest.h>

#include "schema.hpp"

using namespace pilecore;
using namespace pilecore::core;

namespace {

Field int_field(double min, double max) {
  Field f;
  f.key = "port";
  f.type = FieldType::integer;
  f.min = min;
  f.max = max;
  f.unit = "";
  return f;
}

std::optional<std::string> parse(const Field& f, const std::string& yaml, Value& out) { return parse_value(f, YAML::Load(yaml), out); }

}  // namespace

TEST(Schema, IntegerAcceptsDecimalAndHexWithinRange) {
  Value v;
  EXPECT_FALSE(parse(int_field(1, 65535), "502", v));
  EXPECT_EQ(std::get<std::int64_t>(v), 502);
  EXPECT_FALSE(parse(int_field(1, 65535), "0x1F6", v));
  EXPECT_EQ(std::get<std::int64_t>(v), 502);
}

TEST(Schema, IntegerRefusesQuotedFractionalAndOutOfRange) {
  Value v;
  EXPECT_EQ(*parse(int_field(1, 65535), "\"502\"", v), "must be an integer, got the quoted string \"502\" (remove the quotes)");
  EXPECT_EQ(*parse(int_field(1, 65535), "1.5", v), "must be a whole number, got 1.5");
  EXPECT_EQ(*parse(int_field(1, 65535), "70000", v), "is 70000, out of range: allowed 1 to 65535");
  EXPECT_EQ(*parse(int_field(1, 65535), "99999999999999999999", v), "is 99999999999999999999, too large for an integer: allowed 1 to 65535");
}

TEST(Schema, BooleanIsStrict) {
  Field f;
  f.type = FieldType::boolean;
  Value v;
  EXPECT_FALSE(parse(f, "true", v));
  EXPECT_TRUE(std::get<bool>(v));
  EXPECT_EQ(*parse(f, "yes", v), "must be true or false, got 'yes'");
}

TEST(Schema, EnumerationSuggestsTheClosestValue) {
  Field f;
  f.type = FieldType::enumeration;
  f.allowed = {"tcp", "rtu"};
  Value v;
  EXPECT_EQ(*parse(f, "tpc", v), "is 'tpc'; did you mean 'tcp'? allowed values: tcp, rtu");
}

TEST(Schema, AStringDefaultIsReadAsYaml) {
  // Plugins declare "empty by default" as `""` (payment-card's mifare_key, payment-face's
  // merchant_id): that is the empty string, not two quote characters.
  const Value empty = default_value(with_default(field("merchant_id", FieldType::string, "d"), "\"\""));
  EXPECT_EQ(std::get<std::string>(empty), "");
  EXPECT_EQ(std::get<std::string>(default_value(with_default(field("host", FieldType::string, "d"), "127.0.0.1"))), "127.0.0.1");
  EXPECT_EQ(std::get<std::string>(default_value(with_default(field("topic", FieldType::string, "d"), "'pilecore/v1'"))), "pilecore/v1");
}

TEST(Schema, ConfigKeyDeclarationsAreChecked) {
  Field f;
  EXPECT_FALSE(field_from_config_key({.key = "ok_key", .type = ConfigType::integer, .default_value = "5", .min = 0, .max = 10, .description = "d"}, f));
  EXPECT_EQ(*field_from_config_key({.key = "Bad", .description = "d"}, f),
            "key 'Bad': names must be lower case letters, digits and '_', starting with a letter");
  EXPECT_EQ(*field_from_config_key({.key = "k", .type = ConfigType::integer, .default_value = "50", .min = 0, .max = 10, .description = "d"}, f),
            "key 'k': the default is 50, out of range: allowed 0 to 10");
  EXPECT_EQ(*field_from_config_key({.key = "k", .type = ConfigType::enumeration, .description = "d"}, f), "key 'k': an enumeration needs allowed values");
  EXPECT_EQ(*field_from_config_key({.key = "k", .type = ConfigType::string, .default_value = "x", .required = true, .description = "d"}, f),
            "key 'k': a required key cannot have a default");
  EXPECT_EQ(*field_from_config_key({.key = "k"}, f), "key 'k': no description");
}

TEST(Schema, ValidatorReportsEveryProblemWithPosition) {
  Field root;
  root.type = FieldType::object;
  root.fields = {int_field(1, 10)};
  root.fields[0].required = true;
  Field name;
  name.key = "name";
  name.type = FieldType::string;
  root.fields.push_back(name);
  Diagnostics d("f.yaml");
  Validator(d).validate(root, YAML::Load("name: a\nnmae: b\nname: c\n"), "");
  ASSERT_EQ(d.items().size(), 3u) << d.format();
  EXPECT_EQ(d.format(),
            "f.yaml:1:1: error: the top level is missing the required key 'port' (integer, 1 to 10)\n"
            "f.yaml:2:1: error: unknown key 'nmae' in the top level; did you mean 'name'? allowed keys: port, name\n"
            "f.yaml:3:1: error: duplicate key 'name' in the top level (first given at line 1)\n");
}

TEST(Schema, SuggestionOnlyForCloseWords) {
  EXPECT_EQ(suggestion("timezon", {"timezone", "name"}), "did you mean 'timezone'? ");
  EXPECT_EQ(suggestion("xyz", {"timezone", "name"}), "");
}
