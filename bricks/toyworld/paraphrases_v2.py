"""A second hard paraphrase split, written in a clean room: its author saw only the nine skills' definitions
and trained phrasings (not the first hard split, not the routing documents, not the code), and it was added
unread, to measure routing on wording nothing here was written or tuned against. Same four categories as
`HARD_PARAPHRASES`, five phrasings each."""

from __future__ import annotations

__all__ = ["HARD_PARAPHRASES_V2"]

HARD_PARAPHRASES_V2: dict[str, dict[str, tuple[str, ...]]] = {
    'reverse': {
        'synonym': (
            "Invert the sequence of the word's letters so the final one leads.",
            'Transpose the word end-for-end, letter by letter.',
            'Render the word in retrograde, last letter first.',
            'Flip the word around so it is read from its tail to its head.',
            "Produce the word's letters in inverted succession, beginning with the terminal one.",
        ),
        'jargon': (
            'Return s[::-1] for the given string.',
            "Output the result of ''.join(reversed(word)).",
            'Apply strrev() to the input.',
            'Give w^R, the mirror image of the input string w as defined in formal language theory.',
            'Push every character of the word onto a stack, then pop them all and output them in pop order.',
        ),
        'indirect': (
            'Show me how this word would look if I read it starting from the right edge and moving left.',
            "If 'stressed' should come out as 'desserts', do the same to this word.",
            "Pretend you're walking through the word from its final letter to its first, writing down each one as you pass it.",
            'Make it so that someone reading your answer left to right is actually reading the original from its end.',
            'I want the word as a palindrome checker would compare it: the copy that starts at the last letter and ends at the first.',
        ),
        'misspelt': (
            'Revrese teh word.',
            'Wrtie the word backwrds please.',
            'Spel the leters backwards.',
            'Put the letters in oposite ordr.',
            'Turn the wrod arround, last letter frist.',
        ),
    },
    'uppercase': {
        'synonym': (
            'Render every letter of the word as a majuscule.',
            'Write the word out in block letters throughout.',
            'Recast each minuscule letter of the word as its majuscule counterpart.',
            'Typeset the whole word in full caps, leaving no small letters.',
            'Give the word with all its letters in the tall, majuscule form.',
        ),
        'jargon': (
            'Return word.upper().',
            'Apply toUpperCase() to the string.',
            'Run the string through `tr a-z A-Z`.',
            'Map each character c to chr(ord(c) - 32).',
            'Emit what strtoupper() gives for this input.',
        ),
        'indirect': (
            "Make the word look like it's being SHOUTED in a text message.",
            'I need this word to look like it was typed with Caps Lock stuck on.',
            'Give me the word the way an all-caps tabloid headline would print it.',
            'Present the word so that none of its letters are small anymore.',
            'Write it the way it would appear stamped on an old telegram, every letter in the big form.',
        ),
        'misspelt': (
            'Mak the word all uppercse.',
            'Wirte it in captial letters.',
            'Turn evry letter into a captal.',
            'Conver the word to upper caes.',
            'Type the wole word in all cpas.',
        ),
    },
    'sort': {
        'synonym': (
            "Alphabetize the word's individual letters.",
            "Collate the word's letters so they run in abecedarian sequence.",
            'Marshal the letters of the word into the sequence they hold in the alphabet.',
            'Rank the letters of the word by their place in the alphabet and write them out in that ranking.',
            'Reorganize the characters so that each is followed only by letters standing no earlier in the ABCs.',
        ),
        'jargon': (
            "Return ''.join(sorted(s)).",
            'Apply std::sort to the characters of the string and print it.',
            "Give the non-decreasing permutation of the word's characters.",
            'Emit the lexicographically smallest anagram of the input.',
            'Return the characters ordered by their ASCII codes, smallest first.',
        ),
        'indirect': (
            "If 'banana' should become 'aaabnn', do the same with this word.",
            'Picture each letter as a tile on a Scrabble rack that you tidy so it runs from A toward Z; show me the rack.',
            "I'd like the letters regrouped so that someone scanning them meets the early-alphabet ones first and the late-alphabet ones last.",
            "Line the letters up the way entries in a dictionary are ordered, so any a's come before b's and so on.",
            'Imagine the letters are kids lining up for roll call by their own letter name; write down the line.',
        ),
        'misspelt': (
            'Sotr the leters of the word.',
            'Arange the letters in alfabetical order.',
            'Alphabetise teh letters.',
            'Reordr the leters so they run alpabetically.',
            'Can you sortt the charcters of this word?',
        ),
    },
    'count': {
        'synonym': (
            'Tally the letters in the word and report the figure.',
            "Ascertain the word's letter tally.",
            "Reckon up the word's letters and state how many there are.",
            'Determine the magnitude of the word, measured in letters.',
            "Quantify the word's span in letters.",
        ),
        'jargon': (
            'Return len(word).',
            'What does strlen() give for this string?',
            'Report |w|, the number of symbols in the string w.',
            'Print the result of `echo -n word | wc -c`.',
            "Give the string's .length property.",
        ),
        'indirect': (
            'If you typed this word, how many keys would you press, one per letter?',
            'Imagine each letter sits in its own box on a form; how many boxes does the word fill?',
            "Say how many tiles I'd need to spell this word on a Scrabble board.",
            "A crossword clue gives the answer's size in brackets; what number goes in the brackets for this word?",
            'How long is this word, if each letter counts as one unit?',
        ),
        'misspelt': (
            'Cuont the leters.',
            'How many leters are in the wrod?',
            'Whats the lenght of this word?',
            'Tel me the numbr of letters in it.',
            'Count how mnay charactres the word has.',
        ),
    },
    'add': {
        'synonym': (
            'Aggregate the two quantities into their combined amount.',
            'Tot up the pair of numbers.',
            'Augment the first number by the second.',
            'Furnish the combined value of the two figures.',
            'Accumulate the two values into one figure.',
        ),
        'jargon': (
            'Return a + b.',
            'Evaluate operator.add(a, b).',
            'Compute the binary plus of the two operands.',
            'Echo $((a + b)) for the given pair.',
            'Return reduce(lambda x, y: x + y, [a, b]).',
        ),
        'indirect': (
            'If I have the first number of apples and someone gives me the second number more, how many do I have?',
            "Two deposits, the first and the second number, land in an empty account; what's the balance?",
            'Put both piles of coins, one of each size given, onto one heap; how many coins are in it?',
            'What does a cash register show after ringing up these two prices?',
            'Start at the first number on a number line and walk the second number of steps to the right; where do you stop?',
        ),
        'misspelt': (
            'Ad the two numbrs together.',
            'Waht do the two numbers add up to?',
            'Plus the numbers togther.',
            'Give me the summ of bouth numbers.',
            'Addd these nubmers.',
        ),
    },
    'caesar': {
        'synonym': (
            'Advance each letter a single position along the alphabet, wrapping z round to a.',
            'Transmute every letter into its alphabetical successor, with z becoming a.',
            'Encipher the word by moving each letter one step onward in the alphabet.',
            'Substitute for each letter the one that immediately follows it alphabetically, z cycling to a.',
            "Increment each letter's alphabetic rank by one, cyclically.",
        ),
        'jargon': (
            'Apply ROT1 to the string.',
            'Map each char c to chr((ord(c) - 97 + 1) % 26 + 97).',
            'Run `tr a-z b-za` on the input.',
            'Encrypt with a monoalphabetic shift cipher, key k = 1.',
            'Compute x -> (x + 1) mod 26 on every letter index.',
        ),
        'indirect': (
            "Turn 'hal' into 'ibm' style: do that same trick to this word.",
            "Write the word the way Julius Caesar's scribes would if his secret key were just one notch.",
            'Encode the word so a friend who knows to step each letter back by one can read it.',
            'Like a decoder ring turned one click, swap each letter for its neighbour further along in the alphabet.',
            'Pretend every letter moved up one seat in the alphabet, with z going back around to a; what does the word become?',
        ),
        'misspelt': (
            'Shfit the leters one place up the alphabet.',
            'Move evrey letter one step forwrd in the alphabet.',
            'Apply a ceaser cipher with a key of one.',
            'Chang each letter to the one after it in the alphabt.',
            'Rotate each leter by one in the alphabett.',
        ),
    },
    'double': {
        'synonym': (
            'Geminate every letter of the word.',
            'Reduplicate each individual letter in place.',
            'Twin each letter, setting its copy right beside it.',
            'Echo each letter once, immediately after itself.',
            'Replicate each character so that it appears as a consecutive pair.',
        ),
        'jargon': (
            "Return ''.join(c * 2 for c in s).",
            'Apply the morphism that sends each letter x to xx.',
            "Run `sed 's/./&&/g'` on the input.",
            'Interleave the string with itself character by character.',
            'Print the string with every char emitted via flatMap(c => [c, c]).',
        ),
        'indirect': (
            "Make the word look like a stutterer typed it, each letter hitting twice, so 'cat' becomes 'ccaatt'.",
            "Pretend all the keyboard's keys bounce, so every press registers two of the same letter; what comes out?",
            'Write it so that every letter has a twin standing right next to it.',
            'Give me the word as if every letter had been rubber-stamped twice in a row.',
            'Each letter should get a clone immediately to its right.',
        ),
        'misspelt': (
            'Doubel each leter in the word.',
            'Wriet every lettter two times in a row.',
            'Say ech letter twice, back to back.',
            'Type eevry letter two tims.',
            'Make each leter apear twice.',
        ),
    },
    'devowel': {
        'synonym': (
            'Excise the a, e, i, o and u from the word.',
            'Expunge every vocalic letter.',
            'Purge the word of its vowel letters.',
            "Elide all of the word's vowel letters, keeping only the consonants.",
            'Omit the letters a, e, i, o and u, retaining everything else.',
        ),
        'jargon': (
            "Return re.sub('[aeiou]', '', s).",
            'Pipe the input through `tr -d aeiou`.',
            "Filter the characters with `c not in 'aeiou'` and join the rest.",
            'Project the string onto the consonant alphabet, erasing symbols in {a, e, i, o, u}.',
            'Write the word in abjad style, consonant skeleton only.',
        ),
        'indirect': (
            'Pretend the keys a, e, i, o and u are broken on the keyboard and type the word.',
            "Shorten it the way 'building' becomes 'bldng' in hurried notes.",
            'Imagine the five letters a, e, i, o, u were banned from print; how would this word appear?',
            "Give me the consonant skeleton of the word, like texting shorthand where 'text' is 'txt'.",
            'Write it the way a vanity license plate might squeeze it, keeping only the consonants.',
        ),
        'misspelt': (
            'Take out evry vowle.',
            'Get rid of teh vowels.',
            'Erase all vowls in the wrod.',
            'Cut out the voewls.',
            'Keep jsut the consnants.',
        ),
    },
    'subtract': {
        'synonym': (
            'Deduct the second quantity from the first.',
            'Diminish the first number by the second.',
            'Abate the first figure by the amount of the second.',
            'Withdraw the latter value from the former and give what remains.',
            'Determine by how much the first number exceeds the second.',
        ),
        'jargon': (
            'Return a - b.',
            'Evaluate operator.sub(a, b).',
            'Echo $((a - b)) for the given pair.',
            'Apply the binary minus operator with the first number as minuend and the second as subtrahend.',
            'Decrement the first number b times, where b is the second number.',
        ),
        'indirect': (
            'I had the first number of dollars and spent the second number; how much is left?',
            'A tank holds the first amount in litres and the second amount leaks out; how much stays in?',
            'Start at the first number on a number line and walk the second number of steps to the left; where do you land?',
            'The first number is the sticker price and the second is the discount in dollars; what do I pay?',
            'How many more does the first number have than the second?',
        ),
        'misspelt': (
            'Minus the secnd number off the frist.',
            'How much is left wen you subtrct the second from the first?',
            'Find the diffrence: first number minus the seond.',
            'Subtact the later number from the former.',
            'Whats the first number less the secnd one?',
        ),
    },
}
